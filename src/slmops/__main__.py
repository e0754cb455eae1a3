from slmops.cli import main

main()
