"""The runtime side (bundle, scoring, evaluation, CLI) never imports torch."""

import subprocess
import sys
import textwrap

#: Prepended to the subprocess code: any import of torch fails, as on a station without it.
BLOCK_TORCH = textwrap.dedent(
    """
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")

    sys.meta_path.insert(0, NoTorch())
    """
)


def test_runtime_imports_without_torch(random_bundle):
    code = BLOCK_TORCH + textwrap.dedent(
        f"""
        import sclvi.affinity, sclvi.bundle, sclvi.scorer, sclvi.evaluate, sclvi.memory_bank, sclvi.cli, sclvi.engines
        import sclvi.deploy.preflight, sclvi.edge.supervisor
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


def test_tensorrt_build_on_a_target_without_torch_uses_the_bundle_onnx(random_bundle):
    """A Jetson has no torch: build-engines --tensorrt goes on from the exported ONNX graphs; a plain export
    says to export on the training machine."""
    from sclvi.engines.export import export_onnx

    bare = random_bundle.path.parent / "bare"
    import shutil

    shutil.copytree(random_bundle.path, bare)
    export_onnx(random_bundle)
    code = BLOCK_TORCH + textwrap.dedent(
        f"""
        import sclvi.engines as engines
        engines._installed = lambda module: module not in ("torch", "tensorrt")
        from typer.testing import CliRunner
        from sclvi.cli import app

        runner = CliRunner()
        plain = runner.invoke(app, ["build-engines", {str(random_bundle.path)!r}])
        assert plain.exit_code == 2 and "training machine" in plain.output, plain.output
        bare = runner.invoke(app, ["build-engines", {str(bare)!r}, "--tensorrt"])
        assert bare.exit_code == 2 and "training machine" in bare.output, bare.output
        trt = runner.invoke(app, ["build-engines", {str(random_bundle.path)!r}, "--tensorrt"])
        assert "from the bundle's ONNX graphs" in trt.output, trt.output
        assert trt.exit_code == 2 and "TensorRT is not installed" in trt.output, trt.output
        assert "torch" not in sys.modules
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.strip().endswith("OK")
