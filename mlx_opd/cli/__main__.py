from mlx_opd.cli import main

main()
