from vastevents.cli import main

main()
