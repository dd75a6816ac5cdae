#!/usr/bin/env bash
# The paper's figures: each figure's sweep is a Hydra config (conf/figure/figN.yaml) run by
# `python -m fedper.main --multirun +figure=figN`, then drawn by `python -m fedper.plot`.
# This script only turns its options into overrides.
set -euo pipefail
((BASH_VERSINFO[0] >= 4)) || { echo "run_figures.sh: error: needs bash 4 or newer" >&2 && exit 2; }
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
	cat <<'EOF'
Usage: bash run_figures.sh [options] [-- extra Hydra overrides...]

Runs the sweeps of the FedPer paper's figures 2, 4, 7 and 8 (conf/figure/), each run in a
folder named from its overrides, then draws the figures and summary tables. Rerun the same
command to continue: finished runs return at once, half-done ones resume.

  --figures LIST     comma-separated (default: every conf/figure/figN.yaml)
  --seeds N          seeds per setting, from the config's seed on (default: 1)
  --first-seed S     start the seeds at S
  --quick            CPU scale on digits (conf/figure/figN_quick.yaml: figures 2 and 4)
  --rounds N         rounds of every run, instead of each figure's
  --jobs N           runs at once on this machine (hydra/launcher=joblib), each with its
                     own GPU, or without GPUs its share of the cores (default: 1)
  --out DIR          output (default: outputs/figures/full, or outputs/figures/quick, in
                     this checkout and ignored by git); runs go to DIR/runs/figureN/<overrides>/,
                     figures and tables to DIR
  --models, --algorithms, --classes, --heads LIST
                     only these models, algorithms, classes per client or head-layer counts,
                     in the figures that sweep them
  --python PATH      Python interpreter (default: $PYTHON, else the .venv `make` creates,
                     else python)
  --dry-run          list each figure's runs and whether they are finished; run nothing
  -- OVERRIDES...    for every run, e.g. num_clients=4 (names the folders; hardware and path
                     keys do not) or hydra/launcher=slurm hydra.launcher.partition=gpu

Examples: bash run_figures.sh --figures 2,4 --seeds 3    # CIFAR-10 figures, seeds 42-44
          bash run_figures.sh --quick --jobs 2           # figures 2 and 4 on 2 CPU cores
EOF
}
die() { echo -e "run_figures.sh: error: $*\nTry 'bash run_figures.sh --help'." >&2 && exit 2; }
# a path as a Hydra override value: quoted only when Hydra's grammar would split it
hydra_path() { if [[ "$1" =~ ^[A-Za-z0-9_./:+@%-]+$ ]]; then echo "$1"; else echo "'$1'"; fi; }

default_python="$REPO_DIR/.venv/bin/python"
[[ -x "$default_python" ]] || default_python=python
figures=() quick=0 out="" python="${PYTHON:-$default_python}" dry_run=0 sweep=() only=() extra=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	-h | --help) usage && exit 0 ;;
	--quick) quick=1 ;;
	--dry-run) dry_run=1 && sweep+=(hydra.sweeper.dry_run=true) ;;
	--) shift && extra=("$@") && break ;;
	--figures | --seeds | --first-seed | --rounds | --jobs | --out | --python | --models | --algorithms | --classes | --heads)
		[[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
		case "$1" in
		--seeds | --rounds | --jobs) [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 $2: give a whole number >= 1" ;;&
		--first-seed) [[ "$2" =~ ^[0-9]+$ ]] || die "$1 $2: give a whole number >= 0" ;;&
		--models | --algorithms | --classes | --heads) [[ "$2" =~ ^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$ ]] || die "$1 $2: give a comma-separated list" ;;&
		--figures) IFS=',' read -r -a figures <<<"$2" ;;
		--seeds) sweep+=("hydra.sweeper.seeds=$2") ;;
		--first-seed) sweep+=("seed=$2") ;;
		--rounds) sweep+=("num_rounds=$2") ;;
		--jobs) (($2 == 1)) || sweep+=(hydra/launcher=joblib "hydra.launcher.n_jobs=$2") ;;
		--out) out="$2" ;;
		--python) python="$2" ;;
		--models) only+=("model_name:[$2]") ;;
		--algorithms) only+=("algorithm:[$2]") ;;
		--classes) only+=("dataset.num_classes:[$2]") ;;
		--heads) only+=("model.num_head_layers:[$2]") ;;
		esac
		shift
		;;
	*) die "unknown option '$1'" ;;
	esac
	shift
done

((${#figures[@]})) || mapfile -t figures < <(ls "$REPO_DIR/conf/figure" | sed -n 's/^fig\([0-9]*\)\.yaml$/\1/p')
for figure in "${figures[@]}"; do
	[[ -f "$REPO_DIR/conf/figure/fig$figure.yaml" ]] || die "--figures: no figure '$figure' (conf/figure/fig$figure.yaml)"
done
command -v "$python" >/dev/null || die "--python $python: no such interpreter (set --python or \$PYTHON)"
"$python" -c 'import hydra, omegaconf, flwr, torch' 2>/dev/null ||
	die "--python $python: cannot import hydra, flwr and torch (run 'make install', or give the .venv's python)"
# never into docs/results/: its figures and tables are the committed ones
out="${out:-$REPO_DIR/outputs/figures/$( ((quick)) && echo quick || echo full)}"
[[ "$out" == /* ]] || out="$PWD/$out"
[[ "$out" != *"'"* ]] || die "--out $out: a folder name with a single quote cannot be passed to Hydra"
((${#only[@]} == 0)) || sweep+=("hydra.sweeper.only={$(IFS=, && echo "${only[*]}")}")

export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" # fedper, even where it is not installed
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}" RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
trap 'echo -e "\n== interrupted: rerun the same command to continue where it stopped =="; exit 130' INT

failed=()
for figure in "${figures[@]}"; do
	config="fig$figure$( ((quick)) && echo _quick || true)" runs="$out/runs/figure$figure"
	[[ -f "$REPO_DIR/conf/figure/$config.yaml" ]] || { echo "== figure $figure: skipped with --quick (no conf/figure/$config.yaml) ==" && continue; }
	command=("$python" -m fedper.main --multirun "+figure=$config" "hydra.sweep.dir=$(hydra_path "$runs")"
		"state_dir=$(hydra_path "$out/client_states")" ${sweep[@]+"${sweep[@]}"} ${extra[@]+"${extra[@]}"})
	# each table also gives every algorithm's paired per-seed difference to FedPer
	plot=("$python" -m fedper.plot "$runs" --out "$out" --figure "figure$figure" --compare algorithm=fedper)
	echo "== figure $figure: $(printf '%q ' "${command[@]}")=="
	rc=0 && "${command[@]}" || rc=$?
	# 2: a bad setting, 128+: killed; the next figure would fare no better
	((rc != 2 && rc < 128)) || { echo "== figure $figure: stopped (exit $rc) ==" >&2 && exit "$rc"; }
	((rc == 0)) || failed+=("$figure")
	if ((dry_run)); then
		echo "== figure $figure: then $(printf '%q ' "${plot[@]}")=="
	elif compgen -G "$runs/*/results.json" >/dev/null; then
		echo "== figure $figure: drawing into $out ==" && "${plot[@]}" || failed+=("$figure (drawing)")
	else
		echo "== figure $figure: no results yet, nothing to draw =="
	fi
done
((dry_run == 0)) || echo "== dry run: nothing was run =="
((${#failed[@]} == 0)) || { echo "== failed in figure ${failed[*]}: see above; rerun the same command to retry ==" >&2 && exit 1; }
