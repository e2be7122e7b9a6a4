"""Command line: ``slicer shrink | plan | score | verify | demo``. Owns the terminal and exit codes.

Exit codes: 0 done; 2 bad input or environment (one line ``slicer: error: ...``,
nothing written); 130 interrupted.

Long on purpose: every command's arguments with the help texts that teach them; the logic is one short function per command.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import textwrap

from ..version import __version__
from ..errors import Interrupted, SlicerError
from ..plan.build import DTYPE_CHOICES, Plan
from ..plan.request import Request
from .report import format_bytes, format_plan, format_summary
from ..selection import LAYER_SELECTIONS, METHODS

EPILOG = textwrap.dedent(
    """\
    examples:
      slicer demo                                   # build a small teacher, shrink it, show everything
      slicer plan  teacher/ --template student/     # dry run: what would be selected, headers only
      slicer shrink teacher/ out/ --template student/
      slicer shrink vit-s.safetensors vit-t/ --template vit-t-init.safetensors --exclude '^head\\.'

    TEACHER and --template take a .safetensors file, a model.safetensors.index.json,
    or a folder holding either (the Hugging Face layout). Only the template's headers
    (names, shapes) are read; the student keeps its tensor names.

    TEACHER may also be remote: hf://ORG/NAME[@REV], s3://bucket/prefix/ (or any fsspec
    URL), https://host/folder/. Only headers and the kept rows are fetched (needs the
    [remote] extra); e.g. slicer plan hf://meta-llama/Llama-3.1-8B --set hidden_size=2048
    """
)


def _add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("teacher", metavar="TEACHER", help="the large pretrained checkpoint")
    who = p.add_argument_group("student (one of)")
    who.add_argument("--template", metavar="STUDENT",
                     help="a checkpoint with the student's tensor names and shapes (e.g. a randomly initialized student)")
    who.add_argument("--student-config", metavar="CONFIG.json",
                     help="a Hugging Face config.json of the student (needs the [hf] extra: transformers)")
    who.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="config_set",
                     help="edit the teacher's config.json (or --student-config) into the student's, e.g. "
                          "--set hidden_size=2048 --set num_hidden_layers=16; values parse as JSON where they can")
    sel = p.add_argument_group("selection")
    sel.add_argument("--method", choices=METHODS, default=Request.method,
                     help="element selection per dimension: uniform (evenly spaced, the paper's default), "
                          "consecutive (the first s), random (one sorted subset per (t, s), consistent across tensors), "
                          "random-inconsistent (a subset per tensor dimension; an ablation), importance (the top-scored "
                          "members of every axis, in order: --scores or --calibration). Default: uniform")
    sel.add_argument("--seed", type=int, default=Request.seed, help="seed of the random methods (default 0)")
    sel.add_argument("--layer-selection", choices=LAYER_SELECTIONS, default=Request.layer_selection,
                     help="which teacher layers feed the student's where depths differ: first (student layer j <- "
                          "teacher layer j), uniform (evenly spaced) or importance (the layers of highest block influence, "
                          "in order, per kind of layer); per stage in hierarchical models. Default: first")
    sel.add_argument("--attention", choices=("flat", "heads"), default=None,
                     help="heads: keep whole attention heads (kv heads by the method, query heads inside each kept "
                          "group, rotary pairs kept together); flat: select q/k/v rows like any other axis (the "
                          "paper). Default: heads wherever the model is known (--set, --student-config, or a "
                          "config.json beside both teacher and template), flat with a bare template")
    sel.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                     help="skip template tensors whose name matches (re.search); repeatable, e.g. '^head\\.'")
    sel.add_argument("--no-cache", dest="route_cache", action="store_false",
                     help="derive the model's bindings from transformers again instead of reusing those an earlier run "
                          "kept ($SLICER_CACHE, else $XDG_CACHE_HOME/slicer, else ~/.cache/slicer; entries are "
                          "checksummed and keyed by the configs, tensors, options and versions)")
    imp = p.add_argument_group("importance (--method importance, --layer-selection importance)")
    imp.add_argument("--scores", metavar="FILE", help="a scores file of this teacher (slicer score, or another tool's "
                                                       "ranking in the same format; see docs/importance.md)")
    _add_calibration_args(imp, "score the teacher first on this calibration (default: slicer's own short English text)")
    out = p.add_argument_group("output")
    out.add_argument("--dtype", choices=DTYPE_CHOICES, default=Request.dtype,
                     help="cast floating tensors (integer and bool tensors keep theirs). Default: keep the teacher's")
    out.add_argument("--quantized", choices=("blocks", "dequantize"), default=None,
                     help="an FP8 block-scaled teacher (DeepSeek-V3, Qwen3-FP8): blocks keeps whole quantization blocks "
                          "(every axis that touches an FP8 weight is selected in whole blocks, bits exact, scales "
                          "selected with them; refused where a size is not whole blocks); dequantize (implied by a "
                          "float --dtype) multiplies every weight by its block's scale and writes a plain student. "
                          "MXFP4 (gpt-oss) is dequantized by a float --dtype. Default: FP8 weights that keep their "
                          "shape are copied with their scales, one the student changes is refused until you choose")
    out.add_argument("--max-shard-size", default=Request.max_shard_size, metavar="SIZE",
                     help="largest shard, decimal units as Hugging Face uses them (5GB, 500MB, or bytes). Default: 5GB")


def _add_calibration_args(group, calibration_help: str) -> None:
    group.add_argument("--calibration", metavar="FILE", help=calibration_help + "; a text file, a JSONL file or a parquet "
                       "file or folder (the [parquet] extra): texts are tokenized with the teacher's tokenizer, token ids "
                       "taken as they are; a .safetensors file of input_ids or pixel_values; or a folder of images")
    group.add_argument("--calibration-field", metavar="NAME",
                       help="the JSONL field or parquet column to read (default: text, else input_ids); it may hold "
                            "text, token ids or chat messages")
    group.add_argument("--samples", type=int, default=Request.samples, help=f"calibration rows (default {Request.samples})")
    group.add_argument("--seq-len", type=int, default=Request.seq_len,
                       help=f"tokens per calibration row (default {Request.seq_len})")
def _add_remote_args(p: argparse.ArgumentParser) -> None:
    rem = p.add_argument_group("remote teacher (hf://, s3://, http(s)://)")
    rem.add_argument("--revision", metavar="REV", help="hf:// only: branch, tag or commit (default: main; resolved to "
                                                      "a commit once, recorded in the manifest)")
    rem.add_argument("--cache-dir", metavar="DIR", help="keep the fetched byte ranges in DIR for later runs "
                                                        "(default: nothing is written to disk)")
    rem.add_argument("--max-requests", type=int, metavar="N", help="requests in flight (default 16)")
    rem.add_argument("--coalesce-gap", metavar="SIZE", help="fetch kept ranges closer than SIZE as one request, the gap "
                                                           "with them (default 64kB: measured, see docs/remote.md; 0: the fewest bytes)")
    rem.add_argument("--max-overfetch", type=float, metavar="RATIO",
                     help="bridged gap bytes at most RATIO times the kept bytes (default: no fixed budget, gaps are "
                          "bridged where measured to be faster; with this or --coalesce-gap the gap is fixed: 64kB "
                          "within 0.1, at most 1.1x the bytes the student keeps)")


def _remote_kwargs(args) -> dict:
    remote = {}
    if args.max_requests is not None:
        remote["requests"] = args.max_requests
    if args.coalesce_gap is not None:
        from ..plan.build import parse_size

        try:
            remote["gap_bytes"] = 0 if args.coalesce_gap.strip() in ("0", "0B") else parse_size(args.coalesce_gap)
        except SlicerError:
            raise SlicerError(f"--coalesce-gap {args.coalesce_gap!r} is not a size like 64kB, 1MB or 0") from None
    if args.max_overfetch is not None:
        if not args.max_overfetch >= 0:
            raise SlicerError(f"--max-overfetch {args.max_overfetch}: must be 0 or more (0: only the kept bytes)")
        remote["overfetch"] = args.max_overfetch
    return dict(revision=args.revision, cache_dir=args.cache_dir, remote=remote or None)


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    dist = p.add_argument_group("beyond one machine (see docs/distributed.md)")
    dist.add_argument("--shards", metavar="K[,K...]",
                      help="write only these output shards (numbers from 1, ranges as 2-4) into OUT as a staging "
                           "folder of their own; 'slicer finish' then puts the student together")
    dist.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                      help="ray: one Ray task per output shard (the [ray] extra); slurm: one submitit job array "
                           "(the [slurm] extra). Workers read the teacher themselves and write into OUT's staging: "
                           "OUT must be on storage every worker shares. Default: local (this process)")
    dist.add_argument("--address", metavar="ADDR", help="--executor ray: the cluster to join (default: a running "
                                                        "cluster's RAY_ADDRESS, else a local one)")
    dist.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                      help="ray: num_cpus, max_retries (default 1, 3); slurm: submitit parameters (slurm_partition, "
                           "timeout_min, slurm_array_parallelism...); values parse as JSON where they can")


def _distributed_kwargs(args) -> dict:
    if args.executor == "local" and (args.address or args.executor_option):
        raise SlicerError("--address and --executor-option are for --executor ray or slurm")
    options = _parse_set(args.executor_option, "--executor-option")
    if args.address:
        if args.executor != "ray":
            raise SlicerError("--address is for --executor ray")
        options["address"] = args.address
    shards = None
    if args.shards is not None:
        from ..distributed.shards import parse_shards

        shards = parse_shards(args.shards)
    return dict(shards=shards, executor=None if args.executor == "local" else args.executor,
                executor_options=options or None)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line form and exit code as every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"slicer: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="slicer",
        description="Initialize a small model from a large one by weight selection "
                    "(Xu et al., ICLR 2024): streaming, bit-exact, bounded memory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"slicer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    shrink = sub.add_parser("shrink", help="write the student selected from the teacher",
                            description="Select every student tensor from the teacher and write the student to OUT "
                                        "(sharded safetensors + index, config.json, slicer_manifest.json).")
    _add_selection_args(shrink)
    shrink.add_argument("out", metavar="OUT", help="folder to write the student into (created; must be empty unless --overwrite)")
    run = shrink.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to gather (default: cuda if available)")
    run.add_argument("--backend", choices=("auto", "numpy", "torch", "triton"), default="auto",
                     help="numpy (CPU only; the CPU default: no torch import unless --dtype casts), torch ops, or the "
                          "Triton kernel (the GPU default; on the CPU it runs in Triton's interpreter: exact but slow)")
    run.add_argument("--chunk-mb", type=_chunk_mb, default=32, help="memory per chunk in flight, MB (default 32; 3 in flight)")
    run.add_argument("--overwrite", action="store_true",
                     help="write into a non-empty OUT, replacing only a previous slicer student's files and files of "
                          "the same names; every other file is kept")
    run.add_argument("--resume", action="store_true",
                     help="continue a killed run into the same OUT: completed shards that are provably unchanged are "
                          "kept, the rest redone; refused if the teacher or the options changed")
    _add_output_flags(run)
    _add_remote_args(shrink)
    _add_rotation_args(shrink)
    _add_correction_args(shrink)
    _add_distributed_args(shrink)

    plan = sub.add_parser("plan", help="dry run: show what shrink would do, reading headers only",
                          description="Show every student tensor's source, shapes, shards and the bytes to read and "
                                      "write, without reading any tensor data.")
    _add_selection_args(plan)
    plan.add_argument("--json", action="store_true", help="the plan (the manifest shrink would write) as JSON")
    plan.add_argument("--debug", action="store_true", help="show tracebacks")
    _add_remote_args(plan)

    score = sub.add_parser("score", help="score every axis of a teacher on calibration data, streamed (for --method importance)",
                           description="Run the teacher on a calibration batch with one module's weights in memory at a "
                                       "time and write the importance of every axis member (hidden channels, FFN "
                                       "neurons, heads, experts, layers) to a scores file.")
    score.add_argument("teacher", metavar="TEACHER", help="the teacher (with its config.json and tokenizer)")
    _add_calibration_args(score, "calibration data (default: slicer's own short English text)")
    score.add_argument("-o", "--output", metavar="FILE", default="scores.safetensors",
                       help="where to write the scores (default scores.safetensors)")
    score.add_argument("--device", default="auto", help="where the teacher runs: auto (cuda if available), cpu, cuda[:N]")
    score.add_argument("--criterion", choices=["activation", "taylor"], default="taylor",
                       help="taylor (default): (w x grad)^2 of the teacher's next-token loss over every tensor an axis "
                            "binds, a forward and a backward layer by layer; activation: mean activation norms of one "
                            "forward, cheaper (docs/importance.md)")
    _add_output_flags(score)

    verify = sub.add_parser("verify", help="check a written student against its manifest (and the teacher)",
                            description="Re-read OUT's shards and check them against slicer_manifest.json (sizes, "
                                        "sha256, headers, index); with --teacher, also compare tensor values with "
                                        "the teacher's selection (a few rows of every tensor, or all with --full). "
                                        "Exit 0 when all holds, 1 otherwise (one line per problem).")
    verify.add_argument("out", metavar="OUT", help="a folder slicer shrink wrote")
    verify.add_argument("--teacher", metavar="TEACHER", help="the teacher the student was selected from")
    verify.add_argument("--full", action="store_true", help="with --teacher: compare every element, not a sample of rows")
    _add_output_flags(verify)
    _add_remote_args(verify)

    finish = sub.add_parser("finish", help="finish OUT from shards written apart (shrink ... --shards K)",
                            description="Adopt the completed shards of staging folders written by "
                                        "'slicer shrink ... STAGING --shards K' (checked against their recorded size "
                                        "and sha256), then write the index, config and tokenizer files and, last, the "
                                        "manifest into OUT, atomically. Refused: shards of another plan, missing "
                                        "shards, the same shard twice.")
    finish.add_argument("out", metavar="OUT", help="folder to write the student into (created; must be empty unless --overwrite)")
    finish.add_argument("--from", dest="staging", nargs="+", required=True, metavar="STAGING",
                        help="the staging folders of the shard runs")
    finish.add_argument("--overwrite", action="store_true", help="as for shrink: replace a previous student in OUT")
    _add_output_flags(finish)

    demo = sub.add_parser("demo", help="build a small Llama-shaped teacher, shrink it, show plan and summary",
                          description="Runs the whole job on an embedded default in a temporary folder.")
    demo.add_argument("--keep", metavar="DIR", help="build in DIR and keep the files (default: a temporary folder); "
                                                   "DIR must be empty or new")
    demo.add_argument("--overwrite", action="store_true", help="with --keep: replace the demo's files in a non-empty DIR")
    _add_output_flags(demo)

    bench = sub.add_parser("bench", help="gather throughput vs a plain copy, per backend, dtype and shape; one end-to-end run",
                           description="Time the selection (torch on the CPU, the Triton kernel on a GPU) against a "
                                       "copy_ of as many bytes, then slicer.shrink of a generated Llama-shaped teacher.")
    bench.add_argument("--quick", action="store_true", help="fewer shapes, dtypes and repeats, smaller sizes (well under a minute on 2 cores)")
    bench.add_argument("--json", action="store_true", help="print every record (and the machine) as JSON on stdout, "
                                                          "instead of the table")
    bench.add_argument("-o", "--output", metavar="FILE", dest="json_file",
                       help="also write every record (and the machine) as JSON to FILE")
    bench.add_argument("--plot", metavar="FILE.png", help="draw GB/s against size per backend (needs the [plot] extra)")
    bench.add_argument("--interpreter", action="store_true", help="also time the Triton kernel in its CPU interpreter (small cases)")
    bench.add_argument("--size-gb", type=float, default=None, help="end-to-end teacher size, GB (default 1; --quick 0.25)")
    bench.add_argument("--workdir", metavar="DIR", help="where the end-to-end teacher is generated (a temporary folder inside; default: the system's temp dir)")
    bench.add_argument("--repeats", type=int, default=None, help="timed repeats per case; the median is reported (default 5; --quick 3)")
    bench.add_argument("--sizes", metavar="N,N", help="square matrix sizes NxN -> N/2xN/2 (default 1024,2048,4096,8192)")
    bench.add_argument("--dtypes", metavar="D,D", help="from bf16,fp16,fp32,fp8 (default all)")
    bench.add_argument("--shapes", metavar="S,S", help="from square,vocab,conv (default all)")
    bench.add_argument("--selections", metavar="S,S", help="from uniform,consecutive,random (default uniform,consecutive)")
    bench.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end run")
    bench.add_argument("--no-gather", dest="gather", action="store_false", help="skip the gather table")
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    return parser


def _add_output_flags(group) -> None:
    group.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    group.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    group.add_argument("--debug", action="store_true", help="debug logging and tracebacks")


def main(argv: list[str] | None = None) -> int:
    debug = command = None
    try:  # from the first statement: Ctrl-C at any moment is one line and exit 130
        _ensure_std_fds()
        with contextlib.suppress(ValueError):  # not in the main thread: the caller handles signals
            signal.signal(signal.SIGTERM, _interrupt)  # a pipeline's kill cleans up like Ctrl-C
        parser = build_parser()
        args = parser.parse_args(argv)
        debug, command = getattr(args, "debug", False), args.command
        if args.command is None:
            parser.print_help()
            return 2
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="slicer: %(message)s")
        if not args.debug:  # the HTTP libraries of remote teachers log every request at INFO
            for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "botocore", "aiobotocore", "s3fs",
                          "fsspec"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
        if args.quiet if hasattr(args, "quiet") else False:
            logging.getLogger().setLevel(logging.WARNING)
        code = COMMANDS[args.command](args)
        _flush_stdout()
        return code
    except SlicerError as e:
        if debug:
            raise
        _say(f"slicer: error: {e}")
        return 2
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            _say(f"slicer: interrupted; {e}")
        else:
            _say("slicer: interrupted; nothing was written" if command in ("shrink", None) else "slicer: interrupted")
        return 130
    except BrokenPipeError:  # stdout piped into e.g. `head`, which stopped reading: not an error
        _silence_stdout()  # so the exit flush stays quiet
        return 0
    except _StdoutFailed as e:
        _silence_stdout()
        _say(f"slicer: error: cannot write to stdout: {e.strerror or e}{e.note}")
        return 2


def entry() -> None:
    """The console script and ``python -m slicer``: ``main``, then exit with its code.

    Once main has returned, its work is done or undone: a Ctrl-C while Python shuts
    down (torch's teardown takes a while) is ignored instead of printing a traceback
    from an exit handler.
    """
    code = main()
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


class _StdoutFailed(OSError):
    """Writing the command's output failed (a full disk, a closed terminal)."""

    note = ""  # what was done all the same


def _out(text: str = "") -> None:
    """Print the command's output on stdout; a failure there is one line, not a traceback."""
    try:
        print(text)
    except BrokenPipeError:
        raise
    except (OSError, ValueError, AttributeError) as e:
        raise _StdoutFailed(getattr(e, "errno", None) or 0, getattr(e, "strerror", None) or str(e)) from e


def _flush_stdout() -> None:
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:
        failed = _StdoutFailed(getattr(e, "errno", None) or 0, getattr(e, "strerror", None) or str(e))
        failed.note = " (after the command had completed)"
        raise failed from e


def _silence_stdout() -> None:
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def _say(line: str) -> None:
    """One line on stderr, if there is a stderr to write to."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(line, file=sys.stderr, flush=True)


def _ensure_std_fds() -> None:
    """Started with stdin, stdout or stderr closed: put /dev/null there, so that no file
    this run opens (a lock, a shard) becomes fd 1 or 2 and receives log lines."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def _chunk_mb(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MB") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} MB: give at least 1")
    return value


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _selection_kwargs(args) -> dict:
    return dict(template=args.template, student_config=args.student_config, config_set=_parse_set(args.config_set),
                method=args.method, seed=args.seed, layer_selection=args.layer_selection, attention=args.attention,
                exclude=args.exclude, dtype=args.dtype, max_shard_size=args.max_shard_size,
                quantized=args.quantized, scores=args.scores, calibration=_calibration(args), samples=args.samples,
                seq_len=args.seq_len, route_cache=args.route_cache)


def _calibration(args):
    """--calibration FILE, with --calibration-field: the file and the field of its records to read."""
    if args.calibration_field is None:
        return args.calibration
    if args.calibration is None:
        raise SlicerError("--calibration-field names a field of the --calibration file: pass --calibration FILE too")
    from ..importance.calibration import Source

    return Source(args.calibration, args.calibration_field)


def _parse_set(items: list[str], flag: str = "--set") -> dict:
    """--set KEY=VALUE: JSON where it parses (2048, false, [1, 2]), a string otherwise."""
    edits = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlicerError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} "
                              f"{'hidden_size=2048' if flag == '--set' else 'num_cpus=2'}")
        try:
            edits[key] = json.loads(value)
        except json.JSONDecodeError:
            edits[key] = value
    return edits


def cmd_plan(args) -> int:
    from .. import api
    from ..plan import manifest

    the_plan: Plan = api.plan_request(args.teacher, Request.of(**_selection_kwargs(args), **_remote_kwargs(args)))
    if args.json:
        _out(json.dumps(manifest.build(the_plan), indent=1))
    else:
        _out(format_plan(the_plan))
    return 0


def cmd_shrink(args) -> int:
    from .. import api

    request = Request.of(**_selection_kwargs(args), **_remote_kwargs(args), device=args.device, backend=args.backend,
                         overwrite=args.overwrite, resume=args.resume, progress=_show_progress(args),
                         chunk_bytes=args.chunk_mb << 20, **_rotation_kwargs(args), **_correction_kwargs(args),
                         **_distributed_kwargs(args))
    summary = api.shrink_request(args.teacher, args.out, request)
    try:
        _print_summary(args, summary)
        _flush_stdout()
    except _StdoutFailed as e:
        e.note = f" (the student in {args.out} is complete)"
        raise
    except KeyboardInterrupt:  # the student is written: not the generic "nothing was written"
        raise Interrupted(f"{args.out} holds the complete new student") from None
    return 0


def cmd_finish(args) -> int:
    from ..distributed.finish import finish

    summary = finish(args.out, args.staging, overwrite=args.overwrite)
    if args.json:
        _out(json.dumps(summary.as_dict()))
    elif not args.quiet:
        how = f", {summary.copied} copied (another file system)" if summary.copied else ""
        _out(f"finished {summary.out}: {summary.shards} shard{'s' * (summary.shards != 1)} "
             f"({format_bytes(summary.bytes)}) adopted from {len(summary.staging)} staging folder"
             f"{'s' * (len(summary.staging) != 1)}{how} in {summary.seconds:.2f} s; the staging folders can go")
    return 0


def _add_rotation_args(p) -> None:
    from ..rotation.options import add_arguments

    add_arguments(p)


def _add_correction_args(p) -> None:
    from ..corrections.options import add_arguments

    add_arguments(p)


def _correction_kwargs(args) -> dict:
    from ..corrections.options import kwargs

    return kwargs(args)


def _rotation_kwargs(args) -> dict:
    from ..rotation.options import kwargs

    return kwargs(args)


def cmd_score(args) -> int:
    from ..importance import score_to_file

    _check_writable(args.output)  # before the scoring run, not after it
    summary = score_to_file(args.teacher, args.output, calibration=_calibration(args), samples=args.samples,
                            seq_len=args.seq_len, device=args.device, criterion=args.criterion)
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(f"scored {summary['axes']} axes and {summary['layer_lists']} layer list(s) of {summary['teacher']} "
              f"({summary['criterion']}) on "
              f"{summary['tokens']} calibration tokens in {summary['seconds']:.1f} s on {summary['device']} (peak memory "
              f"{format_bytes(summary['peak_memory_bytes'])}); wrote {summary['output']} (sha256 {summary['sha256'][:16]}...)")
    return 0


def cmd_verify(args) -> int:
    from ..verify import verify

    report = verify(args.out, teacher=args.teacher, full=args.full, **_remote_kwargs(args))
    if args.json:
        _out(json.dumps(report.as_dict()))
        return 0 if report.ok else 1
    for problem in report.problems:
        _out(problem)
    if not args.quiet:
        checked = f"{report.shards} shard(s), {report.tensors} tensor(s)"
        if report.dimensions_audited:
            checked += f", {report.dimensions_audited} dimension(s) consistent with their axes"
        if report.teacher is not None:
            how = "every element" if report.full else "sampled rows"
            checked += f", {report.tensors_compared} compared with the teacher ({how}: {report.elements_compared} elements)"
            if report.tensors_rotated:
                checked += (f"; {report.tensors_rotated} of them rotated (--hidden rotate): not sub-tensors, compared "
                            "with teacher x rotation within a tolerance (--json: tolerance)")
            if report.tensors_corrected:
                checked += (f"; {report.tensors_corrected} refitted by --correct, not compared (the manifest's "
                            "corrections record)")
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        _out(f"verify {report.out}: {verdict}; checked {checked}")  # the result: stdout, as every command's
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(keep=args.keep, overwrite=args.overwrite, progress=_show_progress(args),
                    quiet=args.quiet or args.json, on_summary=lambda s: _print_summary(args, s), say=_out)


def cmd_bench(args) -> int:
    from . import bench as bm

    lists = {k: None if getattr(args, k) is None else bm.parse_list(getattr(args, k), int if k == "sizes" else str)
             for k in ("sizes", "dtypes", "shapes", "selections")}
    for path in (args.json_file, args.plot):
        if path:
            _check_writable(path)  # before minutes of timing, not after
    if args.workdir is not None:
        _check_workdir(args.workdir)
    if args.plot:
        bm.require_matplotlib()
    result = bm.run_bench(quick=args.quick, **lists, repeats=args.repeats, size_gb=args.size_gb,
                          interpreter=args.interpreter, gather=args.gather, e2e=args.e2e, workdir=args.workdir)
    if args.plot:
        bm.plot(result, args.plot)
    _out(json.dumps(result.as_dict(), indent=1) if args.json else bm.format_records(result))
    if args.json_file:
        try:
            with open(args.json_file, "w") as f:
                json.dump(result.as_dict(), f, indent=1)
        except OSError as e:
            raise SlicerError(f"{args.json_file}: cannot write: {e.strerror or e}") from e
    return 0


def _check_writable(path: str) -> None:
    """A file the command will write at the end: its folder exists and takes files."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise SlicerError(f"{path}: is a folder; name a file to write")
    if not os.path.isdir(folder):
        raise SlicerError(f"{path}: cannot write there: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SlicerError(f"{path}: cannot write there: folder {folder} is not writable")
    _probe_folder(folder, f"{path}: cannot write there")


def _check_workdir(path: str) -> None:
    """bench --workdir: a folder that takes files, checked before the timing starts."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SlicerError(f"--workdir {path}: not a folder")
    try:
        os.makedirs(path, exist_ok=True)  # as the benchmark would
    except OSError as e:
        raise SlicerError(f"--workdir {path}: cannot create the folder: {e.strerror or e}") from e
    _probe_folder(path, f"--workdir {path}: cannot write there")


def _probe_folder(folder: str, what: str) -> None:
    """Create and remove a file: os.access says yes to root on a read-only mount's chmod, and
    to anyone where a quota or a full disk says no."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".slicer-probe-"):
            pass
    except OSError as e:
        raise SlicerError(f"{what}: {e.strerror or e}") from e


def _show_progress(args) -> bool:
    return not args.quiet and not args.json and sys.stderr.isatty()


def _print_summary(args, summary) -> None:
    if args.json:
        _out(json.dumps(summary.as_dict()))
    elif not args.quiet:
        _out(summary.text() if hasattr(summary, "text") else format_summary(summary))  # text(): a --shards run


COMMANDS = {"plan": cmd_plan, "shrink": cmd_shrink, "finish": cmd_finish, "score": cmd_score, "verify": cmd_verify, "demo": cmd_demo,
            "bench": cmd_bench}
