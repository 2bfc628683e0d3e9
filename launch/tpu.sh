#!/usr/bin/env bash
# A mae_jax run on a Cloud TPU VM or pod slice, through gcloud: create the
# TPU, set up every worker, train on every worker, read logs, stop, delete.
# See `launch/tpu.sh --help`; `--dry-run` prints the gcloud commands instead
# of running them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="mae_jax"       # on each worker, relative to the home directory
TARBALL_NAME="mae_jax.tar.gz"

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh COMMAND [options] [-- flags for mae_jax.main]

Commands
  create   create the TPU VM / pod slice (with --spot: a queued resource,
           waited for until it is ACTIVE)
  setup    copy this checkout to every worker and install it there
           (Python 3.11 venv, requirements.txt, jax[tpu])
  train    start `python -m mae_jax.main --config=... --workdir=...` on every
           worker, in the background; flags after `--` are passed on
           (e.g. -- --config.batch_size=4096)
  logs     follow the training log of one worker (--worker, default 0)
  stop     send SIGTERM to the training on every worker: it saves a
           checkpoint at the current step and exits (rerun `train` to resume)
  status   describe the TPU (or the queued resource, with --spot)
  delete   delete the TPU (and, with --spot, its queued resource)

Options (default: the environment variable in brackets)
  --name NAME            TPU name [TPU_NAME]
  --zone ZONE            e.g. europe-west4-a [TPU_ZONE]
  --project PROJECT      default: gcloud's configured project [TPU_PROJECT]
  --accelerator TYPE     e.g. v3-8, v3-128, v4-32 [TPU_ACCELERATOR]
  --version VERSION      TPU software version; default from the accelerator:
                         tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5-lite
                         (v5litepod), v2-alpha-tpuv5 (v5p),
                         v2-alpha-tpuv6e (v6e) [TPU_VERSION]
  --spot                 spot capacity, through a queued resource
                         [TPU_SPOT=1]
  --config FILE          config file, relative to the repository (train)
  --workdir DIR          gs://bucket/path that all workers share (train)
  --worker N             the worker whose log `logs` follows (default 0)
  --dry-run              print every gcloud command instead of running it
EOF
}

die() {
  echo "tpu.sh: $*" >&2
  exit 2
}

# Settings: flags override the environment.
COMMAND=""
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR="${TPU_ACCELERATOR:-}"
VERSION="${TPU_VERSION:-}"
SPOT="${TPU_SPOT:-0}"
CONFIG=""
WORKDIR=""
WORKER="0"
DRY_RUN=0
TRAIN_FLAGS=()

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --name) NAME="${2:?--name needs a value}"; shift ;;
      --zone) ZONE="${2:?--zone needs a value}"; shift ;;
      --project) PROJECT="${2:?--project needs a value}"; shift ;;
      --accelerator) ACCELERATOR="${2:?--accelerator needs a value}"; shift ;;
      --version) VERSION="${2:?--version needs a value}"; shift ;;
      --spot) SPOT=1 ;;
      --config) CONFIG="${2:?--config needs a value}"; shift ;;
      --workdir) WORKDIR="${2:?--workdir needs a value}"; shift ;;
      --worker) WORKER="${2:?--worker needs a value}"; shift ;;
      --dry-run) DRY_RUN=1 ;;
      --) shift; TRAIN_FLAGS=("$@"); break ;;
      -*) die "unknown option $1 (see --help)" ;;
      *)
        [[ -z "$COMMAND" ]] || die "one command at a time, got '$COMMAND' and '$1'"
        COMMAND="$1" ;;
    esac
    shift
  done
  [[ -n "$COMMAND" ]] || { usage >&2; exit 2; }
}

# Fails naming the option (and variable) of every empty setting given.
require() {
  local name flag
  for name in "$@"; do
    flag="--$(tr '[:upper:]' '[:lower:]' <<<"$name")"
    case "$name" in
      NAME | ZONE | ACCELERATOR) flag="$flag (or TPU_$name)" ;;
    esac
    [[ -n "${!name}" ]] || die "$COMMAND needs $flag"
  done
}

# The arguments, quoted for a POSIX shell, space-separated: a word as it is,
# anything else in single quotes.
quote() {
  local arg quoted=()
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      quoted+=("$arg")
    else
      quoted+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${quoted[*]}"
}

# Runs gcloud, or with --dry-run prints the command, ready to paste.
gcloud_run() {
  if ((DRY_RUN)); then
    quote gcloud "$@"
  else
    gcloud "$@"
  fi
}

# The flags that place a command: zone, and project when one is given.
location_flags() {
  LOCATION=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    LOCATION+=("--project=$PROJECT")
  fi
}

# Runs a shell command on workers ("all" or an index) of the TPU.
on_workers() {
  local workers="$1" command="$2"
  gcloud_run compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" \
    "--worker=$workers" "--command=$command"
}

default_version() {
  case "$ACCELERATOR" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "no default --version for accelerator '$ACCELERATOR'; give one" ;;
  esac
}

cmd_create() {
  require NAME ZONE ACCELERATOR
  local version="$VERSION"
  if [[ -z "$version" ]]; then
    version="$(default_version)"  # under set -e, its `die` stops here too
  fi
  if ((SPOT)); then
    gcloud_run compute tpus queued-resources create "$NAME" "${LOCATION[@]}" \
      "--node-id=$NAME" "--accelerator-type=$ACCELERATOR" \
      "--runtime-version=$version" --spot
    wait_until_active
  else
    gcloud_run compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
      "--accelerator-type=$ACCELERATOR" "--version=$version"
  fi
}

# A queued resource is granted when capacity is free; poll its state.
wait_until_active() {
  local describe=(compute tpus queued-resources describe "$NAME"
    "${LOCATION[@]}" "--format=value(state.state)")
  if ((DRY_RUN)); then
    gcloud_run "${describe[@]}"
    return
  fi
  local state
  while true; do
    state="$(gcloud "${describe[@]}")"
    case "$state" in
      ACTIVE) echo "Queued resource $NAME is ACTIVE."; return ;;
      FAILED | SUSPENDED)
        die "queued resource $NAME is $state; delete it and create it again" ;;
    esac
    echo "Queued resource $NAME is ${state:-not listed yet}; waiting..."
    sleep 30
  done
}

cmd_setup() {
  require NAME ZONE
  local tarball jax_version install
  jax_version="$(sed -n 's/^jax==//p' "$ROOT/requirements.txt")"
  [[ -n "$jax_version" ]] || die "no 'jax==' pin in $ROOT/requirements.txt"
  # The checkout as it is now, uncommitted edits and new files included;
  # what git ignores (virtual environments, workdirs) stays behind.
  if ((DRY_RUN)); then
    tarball="/tmp/$TARBALL_NAME"
    echo "# pack the files of $ROOT that git does not ignore into $tarball"
  else
    PACK_DIR="$(mktemp -d)"
    trap 'rm -rf "$PACK_DIR"' EXIT
    tarball="$PACK_DIR/$TARBALL_NAME"
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
      tar -C "$ROOT" --null -T - -czf "$tarball"
  fi
  gcloud_run compute tpus tpu-vm scp "$tarball" "$NAME:$TARBALL_NAME" \
    "${LOCATION[@]}" --worker=all
  install="set -euo pipefail
if ! command -v python3.11 >/dev/null; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
fi
mkdir -p $REMOTE_DIR
tar -xzf $TARBALL_NAME -C $REMOTE_DIR
cd $REMOTE_DIR
python3.11 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q -r requirements.txt
pip install -q 'jax[tpu]==$jax_version' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
pip install -q --no-deps -e ."
  on_workers all "$install"
}

cmd_train() {
  require NAME ZONE CONFIG WORKDIR
  if [[ "$WORKDIR" != gs://* ]]; then
    echo "tpu.sh: warning: --workdir $WORKDIR is not on GCS; on a pod every" \
      "worker must see the same directory" >&2
  fi
  # Quoted for the worker's shell: each flag arrives as one argument.
  local main_command
  main_command="$(quote python -m mae_jax.main "--config=$CONFIG" \
    "--workdir=$WORKDIR" "${TRAIN_FLAGS[@]}")"
  on_workers all "cd $REMOTE_DIR && . .venv/bin/activate && \
if [ -f train.pid ] && kill -0 \"\$(cat train.pid)\" 2>/dev/null; then \
echo \"already training (pid \$(cat train.pid)); use: launch/tpu.sh stop\" >&2; exit 1; fi && \
{ nohup $main_command >> train.log 2>&1 < /dev/null & echo \$! > train.pid; }"
}

cmd_logs() {
  require NAME ZONE
  on_workers "$WORKER" "tail -n 200 -F $REMOTE_DIR/train.log"
}

cmd_stop() {
  require NAME ZONE
  on_workers all "if [ -f $REMOTE_DIR/train.pid ]; then \
kill -TERM \"\$(cat $REMOTE_DIR/train.pid)\" 2>/dev/null || true; fi"
}

cmd_status() {
  require NAME ZONE
  if ((SPOT)); then
    gcloud_run compute tpus queued-resources describe "$NAME" "${LOCATION[@]}"
  else
    gcloud_run compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}"
  fi
}

cmd_delete() {
  require NAME ZONE
  if ((SPOT)); then
    # --force deletes the TPU VM the queued resource holds.
    gcloud_run compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" \
      --force --quiet
  else
    gcloud_run compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

main() {
  parse_args "$@"
  location_flags
  case "$COMMAND" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    train) cmd_train ;;
    logs) cmd_logs ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    delete) cmd_delete ;;
    *) die "unknown command '$COMMAND' (see --help)" ;;
  esac
}

main "$@"
