"""The runtime side (bundle, scoring, evaluation, CLI) never imports torch."""

import subprocess
import sys
import textwrap


def test_runtime_imports_without_torch(random_bundle):
    code = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        import sclvi.affinity, sclvi.bundle, sclvi.scorer, sclvi.evaluate, sclvi.memory_bank, sclvi.cli, sclvi.engines
        from sclvi.bundle import load_bundle
        from sclvi.errors import BackendError
        import sclvi.engines as engines
        engines._installed = lambda module: module != "torch"  # as on a box without torch
        b = load_bundle({str(random_bundle.path)!r})
        assert b.bank("small").shape[1] == 16
        try:
            engines.load_backend(b)
        except BackendError as exc:
            assert "install" in str(exc)
            assert "torch" not in sys.modules
            print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"
