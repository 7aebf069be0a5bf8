"""`tandem`: the one command. `serve` runs the server; `audit` reviews its log; `guard` shows what
the guard finds in files; `sites` and `conversations` manage the support chat; `bench` measures
the engine; `prepare` converts the model ahead of time; `models` installs and lists the code models."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from .audit import AuditConfig
from .backends.upstream.config import UpstreamConfig
from .engine import EngineConfig
from .models import QUANT_CHOICES
from .settings import environment, settings_file

LOOPBACK_NAMES = ("localhost",)
CHAT_LIMITS = ("visitor_messages_per_minute", "ip_messages_per_minute", "ip_connections_per_minute")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def upstream_roles(entries: tuple[str, ...]) -> dict[str | None, tuple[str, ...]]:
    """`--upstream` values by the surface they name: `completion=URL`, `chat=URL`, or a plain URL
    for both (None). Raises ValueError for an unknown surface."""
    roles: dict[str | None, list[str]] = {}
    for entry in entries:
        role, sep, url = entry.partition("=")
        if sep and "://" not in role:
            if role not in ("completion", "chat"):
                raise ValueError(f"--upstream {entry!r}: the surface before '=' is completion or chat")
            roles.setdefault(role, []).append(url)
        else:
            roles.setdefault(None, []).append(entry)
    return {role: tuple(urls) for role, urls in roles.items()}


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dialog.service import DialogConfig

    from .app import ServerConfig, create_app
    from .serving import DrainingServer

    env = environment()
    api_key = args.api_key or env.api_key
    if not is_loopback(args.host) and not api_key:
        print(f"error: binding to {args.host} exposes the server beyond this machine; set --api-key (or TANDEM_API_KEY)", file=sys.stderr)
        return 2
    from .backends.upstream import UpstreamConfig
    from .model_install import CATALOGUE, installed_gguf

    entries = tuple(args.upstream or ()) or env.upstreams
    try:
        roles = upstream_roles(entries)
        urls = roles.pop(None, ())
        upstream = UpstreamConfig(
            urls=urls,
            api_key=args.upstream_api_key or env.upstream_api_key,
            model=args.upstream_model,
            tokenizer=args.upstream_tokenizer,
            context_length=args.context_length,
            max_concurrency=args.upstream_max_concurrency,
            max_waiting=args.max_waiting,
            read_timeout=args.upstream_timeout,
            health_interval=args.upstream_health_interval,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if urls and args.model:
        print(
            "error: --model loads a model here and --upstream generates elsewhere: choose one (or name a surface: --upstream chat=URL)",
            file=sys.stderr,
        )
        return 2
    if args.model in CATALOGUE and installed_gguf(CATALOGUE[args.model]) is None:
        print(f"error: {args.model} is not installed; run `tandem models install {args.model}`", file=sys.stderr)
        return 2
    engine = EngineConfig(
        max_batch_size=args.max_batch_size,
        max_waiting=args.max_waiting,
        prefix_cache_tokens=args.prefix_cache_tokens,
        context_length=args.context_length,
        decode="compiled" if not args.no_compile and env.compile else "eager",
        speculative=args.speculative == "on",
    )
    config = ServerConfig(
        model=args.model,
        quant=args.quant,
        api_key=api_key,
        engine=engine,
        audit=AuditConfig(
            directory=Path(args.audit_dir) if args.audit_dir else None,
            checkpoint_every=args.audit_checkpoint_every,
            content_days=args.audit_content_days,
            signing_key=Path(args.audit_key) if args.audit_key else None,
            database_url=args.audit_database_url or env.audit_database_url,
            lease_seconds=args.replica_lease_seconds,
        ),
        admin_token=args.admin_token or env.admin_token,
        dialog=DialogConfig(
            directory=Path(args.dialog_dir) if args.dialog_dir else None,
            database_url=args.database_url or env.database_url,
            redis_url=args.redis_url or env.redis_url,
            lease_seconds=args.replica_lease_seconds,
            **{limit: n for limit in CHAT_LIMITS if (n := getattr(args, limit)) is not None},
        ),
        demo_site=not args.no_demo_site and is_loopback(args.host),
        upstream=upstream,
        completion_upstreams=tuple(UpstreamConfig(urls=roles.get("completion", ())).urls),
        chat_upstreams=tuple(UpstreamConfig(urls=roles.get("chat", ())).urls),
    )
    app = create_app(config)
    token_hint = "the --admin-token you gave" if config.admin_token else f"the token in {config.audit.home / 'admin.token'}"
    named = [*urls, *(f"{role}={u}" for role, us in roles.items() for u in us)]
    what = f"generating through {', '.join(named)}" if named else f"loading {args.model or 'the default model'} ({config.quant})"
    print(
        f"Tandem: {what}; serving on http://{args.host}:{args.port}\n"
        f"        audit log review: http://{args.host}:{args.port}/audit (sign in with {token_hint})",
        flush=True,
    )
    listening = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    DrainingServer(listening, app.state.drain, args.drain_seconds).run()
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def _prepare(args: argparse.Namespace) -> int:
    from .models import ModelNotFound, resolve

    try:
        name, path, _ = resolve(args.model)
    except ModelNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{name} is ready in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="A local LLM behind an IDE and a support chat.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (OpenAI-compatible API, metrics)")
    serve.add_argument(
        "--model", default=None, help="default: the embedded SmolLM2-135M-Instruct; or a Hugging Face id, a local directory, a .gguf file"
    )
    serve.add_argument(
        "--quant",
        choices=QUANT_CHOICES,
        default="auto",
        help="weight precision: auto (the default: q4 on a CPU for a model shipped in 4-bit blocks, as the "
        "embedded one is; none otherwise), none (fp32), q4 (4-bit weight groups, bf16 inputs, CPU), "
        "w8a8 (int8 products, CPU; weaker in chat, see the README), bf16, or int8/nf4/fp4 through bitsandbytes",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="at SIGTERM, let running answers finish this long while /healthz says draining (0: stop at once)",
    )
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (mandatory off loopback)")
    serve.add_argument("--max-batch-size", type=int, default=EngineConfig.max_batch_size)
    serve.add_argument(
        "--max-waiting", type=int, default=EngineConfig.max_waiting, help="queue bound; beyond it requests get 503 + Retry-After"
    )
    serve.add_argument("--prefix-cache-tokens", type=int, default=EngineConfig.prefix_cache_tokens, help="0 turns the prefix cache off")
    serve.add_argument(
        "--no-compile",
        action="store_true",
        help="keep the eager decode step instead of compiling the decode step in the background (also TANDEM_COMPILE=0)",
    )
    serve.add_argument(
        "--speculative",
        choices=("on", "off"),
        default="on",
        help="prompt-lookup speculative decoding for greedy interactive requests while the batch is small (same tokens either way)",
    )
    serve.add_argument("--audit-dir", default=None, help="audit database and keys (default: $TANDEM_HOME/audit)")
    serve.add_argument(
        "--audit-database-url",
        default=None,
        help="the audit records on PostgreSQL, postgresql+psycopg://USER:PASSWORD@HOST/DB, one chain for every replica (or TANDEM_AUDIT_DATABASE_URL)",
    )
    serve.add_argument("--audit-key", default=None, help="the checkpoint signing key, kept outside the audit folder (created if missing)")
    serve.add_argument(
        "--audit-checkpoint-every", type=int, default=AuditConfig.checkpoint_every, help="sign the chain head every N records"
    )
    serve.add_argument(
        "--audit-content-days",
        type=int,
        default=AuditConfig.content_days,
        help="keep redacted prompts/outputs this long; 0 keeps only their HMACs",
    )
    serve.add_argument(
        "--admin-token",
        default=None,
        help="token for the /audit review page (or TANDEM_ADMIN_TOKEN; default: generated into the audit dir)",
    )
    serve.add_argument("--dialog-dir", default=None, help="support chat store and visitor-token key (default: $TANDEM_HOME/dialog)")
    serve.add_argument(
        "--database-url",
        default=None,
        help="the chat store on PostgreSQL, postgresql+asyncpg://USER:PASSWORD@HOST/DB (or TANDEM_DATABASE_URL; default: SQLite in the dialog dir)",
    )
    serve.add_argument(
        "--redis-url",
        default=None,
        help="what is live across replicas: who answers a conversation, its frames as made (redis://HOST:6379/0, or TANDEM_REDIS_URL)",
    )
    serve.add_argument(
        "--replica-lease-seconds",
        type=float,
        default=15.0,
        help="with a shared store: a replica silent this long counts as dead, and another marks its cut answers and calls interrupted",
    )
    serve.add_argument("--no-demo-site", action="store_true", help="do not create the `demo` site that /widget/demo uses")
    serve.add_argument(
        "--context-length", type=int, default=None, help="the window to enforce (default: the model's own, or what the upstreams report)"
    )
    up = serve.add_argument_group("generating through other servers (a vLLM, SGLang or llama.cpp server, or other Tandems)")
    up.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="an OpenAI-compatible server to generate through, instead of a model here; repeat for a pool "
        "(least-loaded routing, failover, health checks). completion=URL or chat=URL sends one surface there "
        "and serves the other with --model here. Also TANDEM_UPSTREAMS",
    )
    up.add_argument("--upstream-api-key", default=None, help="the key the upstreams want (or TANDEM_UPSTREAM_API_KEY)")
    up.add_argument("--upstream-model", default=None, help="the model id to ask the upstreams for (default: the one each serves)")
    up.add_argument(
        "--upstream-tokenizer",
        default=None,
        metavar="MODEL",
        help="a model installed here (as --model names it: default, a catalogue name, a directory, a .gguf) whose tokenizer "
        "counts tokens exactly; else the upstreams' tokenize endpoint, else an estimate",
    )
    up.add_argument("--upstream-max-concurrency", type=int, default=UpstreamConfig.max_concurrency, help="requests in flight per upstream")
    up.add_argument(
        "--upstream-timeout",
        type=float,
        default=UpstreamConfig.read_timeout,
        help="seconds an upstream may stay silent before it counts as failed",
    )
    up.add_argument(
        "--upstream-health-interval",
        type=float,
        default=UpstreamConfig.health_interval,
        help="seconds between health checks of each upstream",
    )
    chat = serve.add_argument_group("the support chat's limits (with --redis-url, counted across the replicas)")
    chat.add_argument("--visitor-messages-per-minute", type=int, default=None, metavar="N", help="per visitor (default 20)")
    chat.add_argument("--ip-messages-per-minute", type=int, default=None, metavar="N", help="from one address (default 60)")
    chat.add_argument("--ip-connections-per-minute", type=int, default=None, metavar="N", help="chat sockets from one address (default 60)")
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="the load balancers whose X-Forwarded-For names the visitor's address (comma-separated addresses or networks, '*' for any)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="serve's options in a TOML file (or TANDEM_CONFIG); the command line and environment win",
    )
    serve.set_defaults(func=_serve)

    prepare = sub.add_parser("prepare", help="convert the model into the local cache now (the first `serve` does it too)")
    prepare.add_argument("--model", default=None)
    prepare.set_defaults(func=_prepare)

    bench = sub.add_parser("bench", help="the engine side by side with its peers (throughput, mixed load, quantization, ceiling)")
    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)

    from .models_cli import add_parser as add_models

    add_models(sub)

    from .audit.cli import add_parser as add_audit
    from .guard.cli import add_parser as add_guard

    add_audit(sub)
    add_guard(sub)
    from dialog.bench_support import add_parser as add_support_bench
    from dialog.cli import add_parsers as add_dialog
    from lsp.bench_quality import add_parser as add_quality_bench
    from lsp.bench_typing import add_parser as add_typing_bench
    from lsp.cli import add_parser as add_lsp

    add_dialog(sub)
    add_lsp(sub)
    add_typing_bench(sub)
    add_quality_bench(sub)
    add_support_bench(sub)
    return parser


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of `tandem NAME`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, over serve's settings file where there is one (raises SettingsError)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = getattr(args, "config", None) or (settings_file() if args.command == "serve" else None)
    if config:  # the file's values become serve's defaults, and the command line is read again over them
        from .settings_file import read

        serve = subcommand(parser, "serve")
        serve.set_defaults(**read(Path(config), serve))
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    from .settings_file import SettingsError

    try:
        args = parse(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
