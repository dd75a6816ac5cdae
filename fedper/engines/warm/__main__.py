"""`python -m fedper.engines.warm`: start a SuperNode's ClientApp processes warm."""

from fedper.engines.warm import parse_args, serve

serve(parse_args())
