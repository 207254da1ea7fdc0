"""One module per `fgvc-zoo` subcommand: its arguments (`add_arguments(parser)`) and its `main(args) -> int`, which
imports the library it runs. They share only `common`; `fgvc_zoo.cli` dispatches to them."""
