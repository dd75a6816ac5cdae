#!/usr/bin/env bash
# Reproduce the paper's figures 2, 4, 7 and 8: one `python -m fedper.main` per setting and
# seed, each in a folder named after it (so finished runs are skipped and an interrupted
# sweep continues), then the figures and summary tables with `python -m fedper.plot`.
set -euo pipefail

# ---- --quick: CPU-scale sweeps on the offline digits dataset ------------------------------
# The `make demo` preset (conf/experiment/digits_demo.yaml: 64 px, MobileNet width 0.25,
# 1 local epoch, batch 16, chosen by measurement); change them here and only here.
QUICK_OVERRIDES=(experiment=digits_demo)
QUICK_ROUNDS_MOBILE=20
# ResNet-34 has no width knob and costs ~25 s a round at 64 px on 2 cores. At 48 px its
# last blocks still see 2x2 maps (as at 64 px; 32 px gives 1x1 and unstable BatchNorm) and
# a round takes ~10 s, so 10 rounds keep its 48 quick runs (3 seeds) near 100 min.
QUICK_OVERRIDES_RESNET=(dataset.image_size=48)
QUICK_ROUNDS_RESNET=10
# --------------------------------------------------------------------------------------------

# The paper's sweeps (PROTOCOL.md). Rounds and head layers equal the presets' values but are
# spelled out, because they name the run folders.
HEAD_LAYERS=2 # conf/base.yaml's: figures 2, 7 and 8, and every FedAvg run (where it is moot)
FIG2_ROUNDS=50
FIG2_CLASSES=(4 8 10)
FIG2_ALGORITHMS=(fedper fedavg local fedavg_ft)
FIG4_ROUNDS=25 # the paper's head sweep is shorter than figure 2
FIG4_CLASSES=4
FIG4_HEADS_MOBILE=(1 2 3 4)
FIG4_HEADS_RESNET=(1 2 3)
FLICKR_ROUNDS=35
FLICKR_ALGORITHMS=(fedper fedavg)
FIRST_SEED=42 # the config's seed, so a one-seed sweep reruns exactly the default runs

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3))); then
	echo "run_figures.sh: error: needs bash 4.3 or newer (this is $BASH_VERSION)" >&2
	exit 2
fi
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
	cat <<'EOF'
Usage: bash run_figures.sh [options] [-- extra Hydra overrides...]

Runs the sweeps behind the FedPer paper's figures 2, 4, 7 and 8 (one python -m fedper.main
per setting and seed, each in its own folder), then draws every figure and a summary table
with python -m fedper.plot. Runs whose results.json holds all their rounds are skipped, so
rerunning the same command continues an interrupted sweep (a half-done run resumes from its
last checkpoint).

Figures:
  2  CIFAR-10: fedper, fedavg, local, fedavg_ft at 4, 8 and 10 classes per client,
     MobileNet-v1 and ResNet-34, 50 rounds
  4  CIFAR-10 head-layer sweep at 4 classes per client: fedper with 1-4 (mobile) and
     1-3 (resnet) head layers, fedavg as reference, 25 rounds
  7  FLICKR-AES, MobileNet-v1: fedper and fedavg, 35 rounds
  8  FLICKR-AES, ResNet-34: fedper and fedavg, 35 rounds

Options:
  --figures LIST     figures to make, comma-separated (default: 2,4,7,8)
  --seeds N          seeds per setting: 42, 43, ..., 42+N-1 (default: 1)
  --first-seed S     start the seeds at S instead of 42
  --quick            CPU scale: figures 2 and 4 on the offline digits dataset, MobileNet
                     at width 0.25 for 20 rounds, ResNet-34 at 48 px for 10 rounds
                     (QUICK_* at the top of this script); figures 7 and 8 are skipped
                     (FLICKR-AES is not offline)
  --rounds N         rounds of every run (instead of 50/25/35, or 20/10 with --quick)
  --out DIR          output folder (default: docs/results/full, or docs/results/quick
                     with --quick); runs go to DIR/runs/figureN/<setting>_s<seed>/,
                     figures to DIR/figureN_<model>.png, tables to DIR/figureN_summary.md
  --models LIST      only these models (mobile,resnet)
  --algorithms LIST  only these algorithms (fedper,fedavg,local,fedavg_ft)
  --classes LIST     only these classes per client in figure 2 (4,8,10)
  --heads LIST       only these head-layer counts in figure 4's fedper runs (1-4)
  --python PATH      Python interpreter (default: $PYTHON, else python)
  --dry-run          print the commands that would run and the runs that are done
  -h, --help         print this help and exit
  -- OVERRIDES...    extra Hydra overrides for every run, e.g. -- num_clients=4
                     client_resources.num_gpus=0.5; they do not name the run folders,
                     so use another --out when you change them

Examples:
  bash run_figures.sh                            # everything, one seed (GPU: days)
  bash run_figures.sh --figures 2,4 --seeds 3    # CIFAR-10 figures, seeds 42-44
  bash run_figures.sh --quick                    # CPU check of figures 2 and 4 on digits
EOF
}

die() {
	echo "run_figures.sh: error: $*" >&2
	echo "Try 'bash run_figures.sh --help'." >&2
	exit 2
}

# "a,b" -> the array named by $1; every item must match the pattern in $3
split_list() {
	local -n into="$1"
	local name="$2" pattern="$3" item
	IFS=',' read -r -a into <<<"$4"
	[[ ${#into[@]} -gt 0 ]] || die "$name is empty"
	for item in "${into[@]}"; do
		[[ "$item" =~ ^($pattern)$ ]] || die "$name: '$item' is not one of $pattern"
	done
}

# does the comma-joined list in $1 hold $2?
has() { [[ ",$1," == *",$2,"* ]]; }

figures=(2 4 7 8)
num_seeds=1
quick=0
rounds=""
out=""
models="mobile,resnet"
algorithms="fedper,fedavg,local,fedavg_ft"
classes=""
heads=""
python="${PYTHON:-python}"
dry_run=0
extra=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	-h | --help)
		usage
		exit 0
		;;
	--quick) quick=1 ;;
	--dry-run) dry_run=1 ;;
	--figures | --seeds | --first-seed | --rounds | --out | --models | --algorithms | --classes | --heads | --python)
		[[ $# -ge 2 ]] || die "$1 needs a value"
		case "$1" in
		--figures) split_list figures --figures '2|4|7|8' "$2" ;;
		--seeds) num_seeds="$2" ;;
		--first-seed) FIRST_SEED="$2" ;;
		--rounds) rounds="$2" ;;
		--out) out="$2" ;;
		--models) models="$2" ;;
		--algorithms) algorithms="$2" ;;
		--classes) classes="$2" ;;
		--heads) heads="$2" ;;
		--python) python="$2" ;;
		esac
		shift
		;;
	--)
		shift
		extra=("$@")
		break
		;;
	*) die "unknown option '$1'" ;;
	esac
	shift
done

[[ "$num_seeds" =~ ^[1-9][0-9]*$ ]] || die "--seeds $num_seeds: give a whole number >= 1"
[[ "$FIRST_SEED" =~ ^[0-9]+$ ]] || die "--first-seed $FIRST_SEED: give a whole number >= 0"
[[ -z "$rounds" || "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds $rounds: give a whole number >= 1"
split_list model_list --models 'mobile|resnet' "$models"
split_list algorithm_list --algorithms 'fedper|fedavg|local|fedavg_ft' "$algorithms"
[[ -z "$classes" ]] || split_list class_list --classes '[1-9][0-9]*' "$classes"
[[ -z "$heads" ]] || split_list head_list --heads '[1-9]' "$heads"
command -v "$python" >/dev/null || die "--python $python: no such interpreter (set --python or \$PYTHON)"
if [[ -z "$out" ]]; then
	out="$REPO_DIR/docs/results/$([[ $quick == 1 ]] && echo quick || echo full)"
fi
[[ "$out" == /* ]] || out="$PWD/$out"
[[ "$out" != *"'"* ]] || die "--out $out: a folder name with a single quote cannot be passed to Hydra"

# A path as a Hydra override value: quoted only when Hydra's grammar would split it.
hydra_path() {
	if [[ "$1" =~ ^[A-Za-z0-9_./:+@%-]+$ ]]; then echo "$1"; else echo "'$1'"; fi
}

# fedper is importable even with a Python where it is not installed
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}" RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

seeds=()
for ((i = 0; i < num_seeds; i++)); do seeds+=($((FIRST_SEED + i))); done

# The planned runs of one figure: parallel arrays, reset by plan_reset.
plan_reset() {
	plan_dirs=()
	plan_labels=()
	plan_args=()
}

# plan_add <folder name> <label> <override>...: one run per seed
plan_add() {
	local name="$1" label="$2" seed dir
	shift 2
	for seed in "${seeds[@]}"; do
		dir="$out/runs/$figure_name/${name}_s$seed"
		plan_dirs+=("$dir")
		plan_labels+=("$label seed $seed")
		# \x1f separates the overrides of one run inside a single array element
		plan_args+=("$(printf '%s\x1f' "$@" "seed=$seed" "state_dir=$(hydra_path "$out/client_states")" "hydra.run.dir=$(hydra_path "$dir")")")
	done
}

# A run is finished when its results.json records every round its config asks for.
run_complete() {
	[[ -f "$1/results.json" ]] || return 1
	"$python" - "$1/results.json" <<'PY'
import json, sys

try:
    with open(sys.argv[1]) as file:
        run = json.load(file)
    done = {entry["round"] for entry in run["rounds"]}
    planned = run["config"]["num_rounds"]
except (OSError, ValueError, KeyError, TypeError):
    sys.exit(1)
sys.exit(0 if done >= set(range(1, planned + 1)) else 1)
PY
}

runs_done=0
runs_skipped=0
failed=()
trap 'echo; echo "== interrupted: rerun the same command to continue where it stopped =="; exit 130' INT

run_plan() {
	local total=${#plan_dirs[@]} i label dir args rc start
	for ((i = 0; i < total; i++)); do
		dir="${plan_dirs[i]}"
		label="== figure ${figure_name#figure} ($((i + 1))/$total): ${plan_labels[i]}"
		if run_complete "$dir"; then
			echo "$label: finished, skipped =="
			runs_skipped=$((runs_skipped + 1))
			continue
		fi
		IFS=$'\x1f' read -r -a args <<<"${plan_args[i]}"
		local command=("$python" -m fedper.main "${args[@]}" ${extra[@]+"${extra[@]}"})
		echo "$label =="
		if [[ $dry_run == 1 ]]; then
			printf '%q ' "${command[@]}"
			echo
			continue
		fi
		start=$SECONDS
		rc=0
		"${command[@]}" || rc=$?
		if [[ $rc -ge 128 ]]; then # killed by a signal: stop the sweep, as for Ctrl-C
			echo "== stopped: the run was killed (exit $rc); rerun the same command to continue =="
			exit "$rc"
		elif [[ $rc -ne 0 ]]; then
			echo "== failed (exit $rc): ${plan_labels[i]}; its log is $dir/main.log =="
			failed+=("figure ${figure_name#figure}: ${plan_labels[i]}")
		else
			echo "   finished in $((SECONDS - start)) s"
			runs_done=$((runs_done + 1))
		fi
	done
}

plot_figure() {
	local command=("$python" -m fedper.plot "$out/runs/$figure_name" --out "$out" --figure "$figure_name")
	if [[ $dry_run == 1 ]]; then
		printf '%q ' "${command[@]}"
		echo
	elif compgen -G "$out/runs/$figure_name/*/results.json" >/dev/null; then
		echo "== figure ${figure_name#figure}: drawing into $out =="
		"${command[@]}" || failed+=("figure ${figure_name#figure}: drawing (python -m fedper.plot)")
	else
		echo "== figure ${figure_name#figure}: no results yet, nothing to draw =="
	fi
}

# The CIFAR-10 preset of one model ($1), moved to digits at CPU scale with --quick: sets
# cifar_args, and num_rounds from --rounds, else the quick rounds or the paper's ($2).
model_settings() {
	cifar_args=(--config-name cifar10 "model_name=$1")
	num_rounds="${rounds:-$2}"
	[[ $quick == 1 ]] || return 0
	local -n model_overrides="QUICK_OVERRIDES_${1^^}" model_rounds="QUICK_ROUNDS_${1^^}"
	cifar_args+=("${QUICK_OVERRIDES[@]}" ${model_overrides[@]+"${model_overrides[@]}"})
	num_rounds="${rounds:-$model_rounds}"
}

plan_figure2() {
	local model algorithm k num_rounds cifar_args
	local class_counts=("${FIG2_CLASSES[@]}")
	[[ -z "$classes" ]] || class_counts=("${class_list[@]}")
	for model in "${model_list[@]}"; do
		model_settings "$model" "$FIG2_ROUNDS"
		for k in "${class_counts[@]}"; do
			for algorithm in "${FIG2_ALGORITHMS[@]}"; do
				has "$algorithms" "$algorithm" || continue
				plan_add "${model}_${algorithm}_c${k}_h${HEAD_LAYERS}_r$num_rounds" \
					"$model $algorithm $k classes" "${cifar_args[@]}" \
					"algorithm=$algorithm" "dataset.num_classes=$k" \
					"model.num_head_layers=$HEAD_LAYERS" "num_rounds=$num_rounds"
			done
		done
	done
}

plan_figure4() {
	local model h num_rounds cifar_args common
	for model in "${model_list[@]}"; do
		model_settings "$model" "$FIG4_ROUNDS"
		common=("dataset.num_classes=$FIG4_CLASSES" "num_rounds=$num_rounds")
		local -n sweep="FIG4_HEADS_${model^^}"
		if has "$algorithms" fedper; then
			for h in "${sweep[@]}"; do
				[[ -z "$heads" ]] || has "$heads" "$h" || continue
				plan_add "${model}_fedper_c${FIG4_CLASSES}_h${h}_r$num_rounds" \
					"$model fedper $h head layer$([[ $h == 1 ]] || echo s)" "${cifar_args[@]}" \
					algorithm=fedper "model.num_head_layers=$h" "${common[@]}"
			done
		fi
		if has "$algorithms" fedavg; then # the reference line: the split does not matter
			plan_add "${model}_fedavg_c${FIG4_CLASSES}_h${HEAD_LAYERS}_r$num_rounds" \
				"$model fedavg (reference)" "${cifar_args[@]}" \
				algorithm=fedavg "model.num_head_layers=$HEAD_LAYERS" "${common[@]}"
		fi
		unset -n sweep
	done
}

plan_flickr() { # $1 = model
	local algorithm num_rounds="${rounds:-$FLICKR_ROUNDS}"
	has "$models" "$1" || return 0
	for algorithm in "${FLICKR_ALGORITHMS[@]}"; do
		has "$algorithms" "$algorithm" || continue
		plan_add "${1}_${algorithm}_h${HEAD_LAYERS}_r$num_rounds" "$1 $algorithm" \
			--config-name flickr "model_name=$1" "algorithm=$algorithm" \
			"model.num_head_layers=$HEAD_LAYERS" "num_rounds=$num_rounds"
	done
}

echo "== output: $out; seeds: ${seeds[*]}; $([[ $quick == 1 ]] && echo "quick (digits, CPU scale)" || echo "full (the paper's settings)") =="
for figure in "${figures[@]}"; do
	figure_name="figure$figure"
	plan_reset
	case "$figure" in
	2) plan_figure2 ;;
	4) plan_figure4 ;;
	7 | 8)
		if [[ $quick == 1 ]]; then
			echo "== figure $figure: skipped with --quick (FLICKR-AES is not an offline dataset) =="
			continue
		fi
		plan_flickr "$([[ $figure == 7 ]] && echo mobile || echo resnet)"
		;;
	esac
	if [[ ${#plan_dirs[@]} -eq 0 ]]; then
		echo "== figure $figure: no runs left after --models/--algorithms/--classes/--heads =="
		continue
	fi
	run_plan
	plot_figure
done

if [[ $dry_run == 1 ]]; then
	echo "== dry run: nothing was run =="
	exit 0
fi
echo "== $runs_done run(s) finished, $runs_skipped skipped as already finished, ${#failed[@]} failed; figures in $out =="
if [[ ${#failed[@]} -gt 0 ]]; then
	printf '   failed: %s\n' "${failed[@]}"
	exit 1
fi
