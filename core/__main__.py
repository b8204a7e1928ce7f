from sclvi.cli import main

main()
