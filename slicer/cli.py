"""Command line: ``slicer shrink | plan | verify | demo``. Owns the terminal and exit codes.

Exit codes: 0 done; 2 bad input or environment (one line ``slicer: error: ...``,
nothing written); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap

from . import __version__
from .errors import SlicerError
from .plan import DTYPE_CHOICES, Plan
from .report import format_plan, format_summary
from .selection import LAYER_SELECTIONS, METHODS

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
    sel.add_argument("--method", choices=METHODS, default="uniform",
                     help="element selection per dimension: uniform (evenly spaced, the paper's default), "
                          "consecutive (the first s), random (one sorted subset per (t, s), consistent across tensors), "
                          "random-inconsistent (a subset per tensor dimension; an ablation). Default: uniform")
    sel.add_argument("--seed", type=int, default=0, help="seed of the random methods (default 0)")
    sel.add_argument("--layer-selection", choices=LAYER_SELECTIONS, default="first",
                     help="which teacher layers feed the student's where depths differ: first (student layer j <- "
                          "teacher layer j) or uniform (evenly spaced); per stage in hierarchical models. Default: first")
    sel.add_argument("--attention", choices=("flat", "heads"), default=None,
                     help="heads: keep whole attention heads (kv heads by the method, query heads inside each kept "
                          "group, rotary pairs kept together); flat: select q/k/v rows like any other axis (the "
                          "paper). Default: heads with a config, flat with a template")
    sel.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                     help="skip template tensors whose name matches (re.search); repeatable, e.g. '^head\\.'")
    out = p.add_argument_group("output")
    out.add_argument("--dtype", choices=DTYPE_CHOICES, default="keep",
                     help="cast floating tensors (integer and bool tensors keep theirs). Default: keep the teacher's")
    out.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                     help="largest shard, decimal units as Hugging Face uses them (5GB, 500MB, or bytes). Default: 5GB")


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
    run.add_argument("--chunk-mb", type=int, default=32, help="memory per chunk in flight, MB (default 32; 3 in flight)")
    run.add_argument("--overwrite", action="store_true", help="replace the student files in a non-empty OUT")
    run.add_argument("--resume", action="store_true",
                     help="continue a killed run into the same OUT: completed shards whose size and sha256 match are "
                          "kept, the rest redone; refused if the teacher or the options changed")
    _add_output_flags(run)

    plan = sub.add_parser("plan", help="dry run: show what shrink would do, reading headers only",
                          description="Show every student tensor's source, shapes, shards and the bytes to read and "
                                      "write, without reading any tensor data.")
    _add_selection_args(plan)
    plan.add_argument("--json", action="store_true", help="the plan (the manifest shrink would write) as JSON")
    plan.add_argument("--debug", action="store_true", help="show tracebacks")

    verify = sub.add_parser("verify", help="check a written student against its manifest (and the teacher)",
                            description="Re-read OUT's shards and check them against slicer_manifest.json (sizes, "
                                        "sha256, headers, index); with --teacher, also compare tensor values with "
                                        "the teacher's selection (a few rows of every tensor, or all with --full). "
                                        "Exit 0 when all holds, 1 otherwise (one line per problem).")
    verify.add_argument("out", metavar="OUT", help="a folder slicer shrink wrote")
    verify.add_argument("--teacher", metavar="TEACHER", help="the teacher the student was selected from")
    verify.add_argument("--full", action="store_true", help="with --teacher: compare every element, not a sample of rows")
    _add_output_flags(verify)

    demo = sub.add_parser("demo", help="build a small Llama-shaped teacher, shrink it, show plan and summary",
                          description="Runs the whole job on an embedded default in a temporary folder.")
    demo.add_argument("--keep", metavar="DIR", help="build in DIR and keep the files (default: a temporary folder)")
    _add_output_flags(demo)

    bench = sub.add_parser("bench", help="gather throughput vs a plain copy, per backend, dtype and shape; one end-to-end run",
                           description="Time the selection (torch on the CPU, the Triton kernel on a GPU) against a "
                                       "copy_ of as many bytes, then slicer.shrink of a generated Llama-shaped teacher.")
    bench.add_argument("--quick", action="store_true", help="fewer shapes, dtypes and repeats, smaller sizes (well under a minute on 2 cores)")
    bench.add_argument("--json", metavar="FILE", dest="json_file", help="write every record (and the machine) as JSON")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="slicer: %(message)s")
    if args.quiet if hasattr(args, "quiet") else False:
        logging.getLogger().setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)  # a pipeline's kill cleans up like Ctrl-C
    try:
        return COMMANDS[args.command](args)
    except SlicerError as e:
        if args.debug:
            raise
        print(f"slicer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slicer: interrupted; nothing was left in OUT", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _selection_kwargs(args) -> dict:
    return dict(template=args.template, student_config=args.student_config, config_set=_parse_set(args.config_set),
                method=args.method, seed=args.seed, layer_selection=args.layer_selection, attention=args.attention,
                exclude=args.exclude, dtype=args.dtype, max_shard_size=args.max_shard_size)


def _parse_set(items: list[str]) -> dict:
    """--set KEY=VALUE: JSON where it parses (2048, false, [1, 2]), a string otherwise."""
    edits = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlicerError(f"--set {item!r}: expected KEY=VALUE, e.g. --set hidden_size=2048")
        try:
            edits[key] = json.loads(value)
        except json.JSONDecodeError:
            edits[key] = value
    return edits


def cmd_plan(args) -> int:
    from . import api, manifest

    the_plan: Plan = api.plan(args.teacher, **_selection_kwargs(args))
    if args.json:
        print(json.dumps(manifest.build(the_plan), indent=1))
    else:
        print(format_plan(the_plan))
    return 0


def cmd_shrink(args) -> int:
    from . import api

    summary = api.shrink(args.teacher, args.out, **_selection_kwargs(args), device=args.device, backend=args.backend,
                         overwrite=args.overwrite, resume=args.resume, progress=_show_progress(args), chunk_bytes=args.chunk_mb << 20)
    _print_summary(args, summary)
    return 0


def cmd_verify(args) -> int:
    from .verify import verify

    report = verify(args.out, teacher=args.teacher, full=args.full)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0 if report.ok else 1
    for problem in report.problems:
        print(problem)
    if not args.quiet:
        checked = f"{report.shards} shard(s), {report.tensors} tensor(s)"
        if report.teacher is not None:
            how = "every element" if report.full else "sampled rows"
            checked += f", {report.tensors_compared} compared with the teacher ({how}: {report.elements_compared} elements)"
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"verify {report.out}: {verdict}; checked {checked}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(keep=args.keep, progress=_show_progress(args), quiet=args.quiet or args.json,
                    on_summary=lambda s: _print_summary(args, s))


def cmd_bench(args) -> int:
    from . import benchmark as bm

    lists = {k: None if getattr(args, k) is None else bm.parse_list(getattr(args, k), int if k == "sizes" else str)
             for k in ("sizes", "dtypes", "shapes", "selections")}
    if args.plot:
        bm.require_matplotlib()  # before minutes of timing, not after
    result = bm.run_bench(quick=args.quick, **lists, repeats=args.repeats, size_gb=args.size_gb,
                          interpreter=args.interpreter, gather=args.gather, e2e=args.e2e, workdir=args.workdir)
    if args.plot:
        bm.plot(result, args.plot)
    print(bm.format_records(result))
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(result.as_dict(), f, indent=1)
    return 0


def _show_progress(args) -> bool:
    return not args.quiet and not args.json and sys.stderr.isatty()


def _print_summary(args, summary) -> None:
    if args.json:
        print(json.dumps(summary.as_dict()))
    elif not args.quiet:
        print(format_summary(summary))


COMMANDS = {"plan": cmd_plan, "shrink": cmd_shrink, "verify": cmd_verify, "demo": cmd_demo, "bench": cmd_bench}
