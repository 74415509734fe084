"""Command line: `python -m proxy serve`, `check-config`, `hash-key` and `mock-upstream`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

_PORT_FILE_HELP = "once listening, write the bound port to this file (atomically); useful with --port 0"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible proxy")
    serve.add_argument("--config", help="YAML configuration file (default: none, environment only)")
    serve.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (default from config: 8080; 0: any free port)")
    serve.add_argument("--workers", type=int, help="worker processes (default from config: 1)")
    serve.add_argument("--port-file", help=_PORT_FILE_HELP)

    check = sub.add_parser("check-config", help="validate a configuration without starting (exit 0 or 2)")
    check.add_argument("--config", help="YAML configuration file (default: none, environment only)")

    hash_key = sub.add_parser("hash-key", help="print the auth.keys[].key_sha256 value for a client key")
    hash_key.add_argument("key", nargs="?", help="the key (default: read one line from standard input)")

    mock = sub.add_parser("mock-upstream", help="run the built-in mock of Anthropic's /v1/complete")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8090, help="bind port (0: any free port)")
    mock.add_argument("--port-file", help=_PORT_FILE_HELP)
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

        run(host=args.host, port=args.port, api_keys=args.api_key, port_file=args.port_file)
        return 0
    if args.command == "check-config":
        from proxy.check import check_config

        return check_config(args.config)
    if args.command == "hash-key":
        from proxy.auth import hash_key

        key = args.key if args.key is not None else sys.stdin.readline().strip()
        if not key:
            print("proxy: no key given", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    from proxy.launch import serve

    return serve(
        config_path=args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        port_file=args.port_file,
    )


if __name__ == "__main__":
    sys.exit(main())
