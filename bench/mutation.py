"""Mutation testing of the pure modules: metrics, targets, tiling, masking and the guards of export/check.py.

    python bench/mutation.py [--max-children N] [--reuse] [--fail-under PERCENT]

Copies the code and the tests into a scratch folder (bench/results/mutation/main, ignored by git: mutmut
writes its `mutants/` folder next to the code, and a run must not see files that others are editing), runs
`mutmut run` there with the `[tool.mutmut]` settings of pyproject.toml (which modules, which tests, no slow
ones), then prints per module: mutants, killed, survived, survivors judged equivalent (listed with their
reasons in bench/mutation_equivalent.toml) and the score, over all mutants and over the non-equivalent
ones. A timeout counts as killed. A survivor that is neither killed nor explained is listed by name:
`mutmut show NAME` in the scratch folder prints its diff. Writes bench/results/mutation.json. `--reuse`
keeps the previous run's mutants and results, so mutmut retests only what changed; `--fail-under 90` exits
with status 1 when a module's score over its non-equivalent mutants is lower.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "bench" / "results" / "mutation"
MUTMUT = Path(sys.executable).parent / "mutmut"
COPIED = ("base", "zoo", "training", "export", "tests", "pyproject.toml")
MODULES = ("training.metrics", "training.targets", "training.tiling", "training.masking", "export.check")

# Surviving mutants that no test can kill, because the code behaves the same: name -> why.
EQUIVALENT: dict[str, str] = {
    name: why
    for table in tomllib.loads((ROOT / "bench" / "mutation_equivalent.toml").read_text()).values()
    for name, why in table.items()
}


def _copy_tree(scratch: Path, reuse: bool) -> Path:
    """The scratch checkout, `scratch/main`, with fresh copies of the code and tests."""
    work = scratch / "main"
    if work.exists() and not reuse:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source, target = ROOT / name, work / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")
            shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    # The tests run in `mutants/`, and tests/conftest.py looks for ../shared/data beside their checkout.
    link = work / "shared"
    if not link.exists() and (ROOT.parent / "shared").exists():
        link.symlink_to(ROOT.parent / "shared")
    return work


def _results(work: Path) -> dict[str, str]:
    """mutant name -> status ("killed", "survived", "no tests", "timeout", ...) from `mutmut results`."""
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"^\s+(\S+): (.+)$", out, flags=re.MULTILINE))


def _module(mutant: str) -> str:
    return re.match(r"(.*?)\.x[_ǁ]", mutant).group(1)


def summarise(results: dict[str, str]) -> dict:
    rows, unexplained = [], []
    for module in MODULES:
        statuses = {name: s for name, s in results.items() if _module(name) == module}
        survivors = [name for name, s in statuses.items() if s not in ("killed", "timeout")]
        equivalent = [name for name in survivors if name in EQUIVALENT]
        unexplained += [f"{name}: {statuses[name]}" for name in survivors if name not in EQUIVALENT]
        total = len(statuses)
        killed = total - len(survivors)
        rows.append(
            {
                "module": module,
                "mutants": total,
                "killed": killed,
                "survived": total - killed,
                "equivalent": len(equivalent),
                "score": killed / total if total else float("nan"),
                "score_non_equivalent": killed / (total - len(equivalent)) if total else float("nan"),
            }
        )
    return {"modules": rows, "unexplained": sorted(unexplained)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--max-children",
        type=int,
        default=os.cpu_count(),
        help="mutants tested at once (default: one per core)",
    )
    parser.add_argument("--reuse", action="store_true", help="keep the previous run's mutants and results")
    parser.add_argument(
        "--fail-under",
        type=float,
        metavar="PERCENT",
        help="exit 1 if a module's non-equivalent score is lower",
    )
    args = parser.parse_args(argv)
    work = _copy_tree(SCRATCH, args.reuse)
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
    subprocess.run(
        [str(MUTMUT), "run", "--max-children", str(args.max_children)], cwd=work, env=env, check=True
    )
    summary = summarise(_results(work))
    print(
        f"\n{'module':<20}{'mutants':>8}{'killed':>8}{'survived':>9}{'equiv.':>8}{'score':>8}{'non-eq.':>9}"
    )
    for r in summary["modules"]:
        print(
            f"{r['module']:<20}{r['mutants']:>8}{r['killed']:>8}{r['survived']:>9}{r['equivalent']:>8}"
            f"{r['score']:>8.1%}{r['score_non_equivalent']:>9.1%}"
        )
    for line in summary["unexplained"]:
        print("survived, not explained:", line)
    (SCRATCH.parent / "mutation.json").write_text(json.dumps(summary, indent=1))
    if args.fail_under is not None:
        low = [r["module"] for r in summary["modules"] if r["score_non_equivalent"] * 100 < args.fail_under]
        if low:
            print(f"below {args.fail_under:g} %: {', '.join(low)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
