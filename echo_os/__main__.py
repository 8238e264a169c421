from echo_os.cli import main

main()
