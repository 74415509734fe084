"""Command line: `python -m proxy serve` and `python -m proxy mock-upstream`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible proxy")
    serve.add_argument("--config", help="YAML configuration file (default: none, environment only)")
    serve.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (default from config: 8080)")

    mock = sub.add_parser("mock-upstream", help="run the built-in mock of Anthropic's /v1/complete")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8090)
    mock.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accept only this x-api-key (repeatable); by default any non-empty key is accepted",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "mock-upstream":
        from proxy.mock.server import run

        run(host=args.host, port=args.port, api_keys=args.api_key)
        return 0
    from proxy.server import serve

    return serve(config_path=args.config, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
