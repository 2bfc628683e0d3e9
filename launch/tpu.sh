#!/usr/bin/env bash
# A mae_jax run on a Cloud TPU VM or pod slice, through gcloud: create the
# TPU, set up every worker, train on every worker, read logs, stop, delete.
# See `launch/tpu.sh --help`; `--dry-run` prints the gcloud commands instead
# of running them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="mae_jax"       # on each worker, relative to the home directory
TARBALL_NAME="mae_jax.tar.gz"
SSH_KEY="$HOME/.ssh/google_compute_engine"  # the key gcloud's ssh uses
POLL_FAILURES=5            # consecutive failed state polls before giving up
APT_ATTEMPTS=15            # apt-get tries, 20 s apart, while apt is busy

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh COMMAND [options] [-- flags for mae_jax.main]

Commands
  create   create the TPU VM / pod slice (with --spot: a queued resource,
           waited for until it is ACTIVE; rerun to wait again)
  setup    copy this checkout to every worker and install it there
           (Python 3.11 venv, requirements.txt, jax[tpu])
  train    start `python -m mae_jax.main --config=... --workdir=...` on every
           worker, in the background, or on none if any worker is not set
           up or still training; flags after `--` are passed on
           (e.g. -- --config.batch_size=4096)
  logs     follow the training log of one worker (--worker, default 0)
  stop     send SIGTERM to the training on every worker: it saves a
           checkpoint at the current step and exits; waits until it has
           exited everywhere (rerun `train` to resume)
  status   describe the TPU, or its queued resource if it has one
  delete   delete the TPU, or its queued resource (and the TPU) if it has one

Options (default: the environment variable in brackets)
  --name NAME            TPU name [TPU_NAME]
  --zone ZONE            e.g. europe-west4-a [TPU_ZONE]
  --project PROJECT      default: gcloud's configured project [TPU_PROJECT]
  --accelerator TYPE     e.g. v3-8, v3-128, v4-32 [TPU_ACCELERATOR]
  --version VERSION      TPU software version; default from the accelerator:
                         tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5-lite
                         (v5litepod), v2-alpha-tpuv5 (v5p),
                         v2-alpha-tpuv6e (v6e) [TPU_VERSION]
  --spot                 create: spot capacity, through a queued resource
                         [TPU_SPOT=1]
  --config FILE          config file, relative to the repository (train)
  --workdir DIR          gs://bucket/path that all workers share (train)
  --worker N             the worker whose log `logs` follows (default 0)
  --stop-timeout SECONDS how long `stop` waits for the run to exit
                         (default 600) [TPU_STOP_TIMEOUT]
  --poll-seconds SECONDS between polls of a queued resource's state
                         (default 30) [TPU_POLL_SECONDS]
  --dry-run              print every gcloud command instead of running it

On a pod (more than one worker), gcloud reaches the workers through
ssh-agent: `ssh-add ~/.ssh/google_compute_engine` first (setup, train and
stop check it).
EOF
}

die() {
  echo "tpu.sh: $*" >&2
  exit 2
}

# Progress, on stderr: with --dry-run, stdout holds only commands.
say() {
  echo "tpu.sh: $*" >&2
}

# Settings: flags override the environment.
COMMAND=""
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR="${TPU_ACCELERATOR:-}"
VERSION="${TPU_VERSION:-}"
SPOT="${TPU_SPOT:-0}"
STOP_TIMEOUT="${TPU_STOP_TIMEOUT:-600}"
POLL_SECONDS="${TPU_POLL_SECONDS:-30}"
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
      --stop-timeout) STOP_TIMEOUT="${2:?--stop-timeout needs a value}"; shift ;;
      --poll-seconds) POLL_SECONDS="${2:?--poll-seconds needs a value}"; shift ;;
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
  [[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] ||
    die "--stop-timeout must be a whole number of seconds, got '$STOP_TIMEOUT'"
  [[ "$POLL_SECONDS" =~ ^[0-9]+$ ]] ||
    die "--poll-seconds must be a whole number of seconds, got '$POLL_SECONDS'"
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

# Shell functions for the scripts run on the workers, in the home directory.
# running: whether the run recorded in $remote_dir/train.pid is alive (a
# zombie, which only waits for its parent to read its status, has exited).
read -r -d '' REMOTE_FUNCTIONS <<'EOF' || true
running() {
  [ -f "$remote_dir/train.pid" ] || return 1
  state="$(ps -o stat= -p "$(cat "$remote_dir/train.pid")" 2>/dev/null)" ||
    return 1
  [ "${state#Z}" = "$state" ]
}
EOF

# A script for the workers: the assignments given (NAME=VALUE, quoted for
# the worker's shell), REMOTE_FUNCTIONS, then the body read from stdin.
remote_script() {
  local assignment
  printf 'remote_dir=%s\n' "$(quote "$REMOTE_DIR")"
  for assignment in "$@"; do
    printf '%s=%s\n' "${assignment%%=*}" "$(quote "${assignment#*=}")"
  done
  echo "$REMOTE_FUNCTIONS"
  cat
}

# Runs a shell command on workers ("all" or an index) of the TPU.
on_workers() {
  local workers="$1" command="$2"
  gcloud_run compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" \
    "--worker=$workers" "--command=$command"
}

# Runs the function $1 if a queued resource named $NAME exists, else $2: what
# exists says which kind of TPU this is, not TPU_SPOT. With --dry-run, prints
# the query and both branches.
if_queued_resource() {
  local list=(compute tpus queued-resources list "${LOCATION[@]}"
    "--format=value(name.basename())")
  if ((DRY_RUN)); then
    gcloud_run "${list[@]}"
    echo "# if it lists $NAME:"
    "$1"
    echo "# otherwise:"
    "$2"
    return
  fi
  local names
  names="$(gcloud "${list[@]}")" ||
    die "could not list the queued resources in $ZONE (gcloud's error is" \
      "above); rerun when gcloud works again"
  if grep -qxF -- "$NAME" <<<"$names"; then
    "$1"
  else
    "$2"
  fi
}

# On a pod, gcloud's scp/ssh --worker=all reach the workers in parallel with
# the key in ssh-agent, and without it stop or stall: check before using them.
check_ssh_agent() {
  local describe=(compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}"
    "--format=value(networkEndpoints.len())")
  if ((DRY_RUN)); then
    gcloud_run "${describe[@]}"
    echo "# more than one worker: ssh-agent must hold $SSH_KEY"
    return
  fi
  local workers
  workers="$(gcloud "${describe[@]}")" ||
    die "could not describe TPU $NAME in $ZONE (gcloud's error is above);" \
      "does it exist? launch/tpu.sh status"
  [[ "$workers" =~ ^[0-9]+$ ]] ||
    die "gcloud gave '$workers' as the number of workers of $NAME"
  ((workers > 1)) || return 0
  local pod="$NAME has $workers workers, which gcloud reaches through ssh-agent"
  [[ -f "$SSH_KEY.pub" ]] ||
    die "$pod, and there is no $SSH_KEY yet: create it with" \
      "'gcloud compute tpus tpu-vm ssh $NAME ${LOCATION[*]} --worker=0" \
      "--command=true', then run 'ssh-add $SSH_KEY'"
  local fingerprint listed status=0
  fingerprint="$(ssh-keygen -lf "$SSH_KEY.pub" | cut -d ' ' -f 2)" || true
  [[ -n "$fingerprint" ]] || die "ssh-keygen cannot read $SSH_KEY.pub"
  listed="$(ssh-add -l 2>/dev/null)" || status=$?
  if ((status == 2)); then
    die "$pod, and no ssh-agent runs here: eval \"\$(ssh-agent -s)\"" \
      "&& ssh-add $SSH_KEY, then rerun"
  fi
  [[ "$listed" == *"$fingerprint"* ]] ||
    die "$pod, and the agent does not hold $SSH_KEY: ssh-add $SSH_KEY," \
      "then rerun"
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
  RUNTIME_VERSION="$VERSION"
  if [[ -z "$RUNTIME_VERSION" ]]; then
    RUNTIME_VERSION="$(default_version)"  # under set -e, its `die` stops here
  fi
  if ((SPOT)); then
    if_queued_resource keep_queued_resource create_queued_resource
    wait_until_active
  else
    gcloud_run compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
      "--accelerator-type=$ACCELERATOR" "--version=$RUNTIME_VERSION"
  fi
}

keep_queued_resource() {
  if ((DRY_RUN)); then
    echo "# create none: wait for it"
  else
    say "queued resource $NAME exists already: waiting for it, not" \
      "creating another"
  fi
}

create_queued_resource() {
  gcloud_run compute tpus queued-resources create "$NAME" "${LOCATION[@]}" \
    "--node-id=$NAME" "--accelerator-type=$ACCELERATOR" \
    "--runtime-version=$RUNTIME_VERSION" --spot
}

# A queued resource is granted when capacity is free; poll its state, through
# a few failed polls in a row (a gcloud or network hiccup).
wait_until_active() {
  local describe=(compute tpus queued-resources describe "$NAME"
    "${LOCATION[@]}" "--format=value(state.state)")
  if ((DRY_RUN)); then
    gcloud_run "${describe[@]}"
    return
  fi
  local state failures=0
  while true; do
    if state="$(gcloud "${describe[@]}")"; then
      failures=0
      case "$state" in
        ACTIVE) say "queued resource $NAME is ACTIVE"; return ;;
        FAILED | SUSPENDED)
          die "queued resource $NAME is $state; delete it (launch/tpu.sh" \
            "delete) and create it again" ;;
      esac
      say "queued resource $NAME is ${state:-not listed yet}; waiting..."
    else
      failures=$((failures + 1))
      if ((failures == POLL_FAILURES)); then
        die "could not read the state of queued resource $NAME $failures" \
          "times in a row (gcloud's error is above). It may still be" \
          "queued: see launch/tpu.sh status, and rerun this create to wait" \
          "for it (it creates no second one)"
      fi
      say "could not read the state of $NAME ($failures of $POLL_FAILURES" \
        "tries); trying again"
    fi
    sleep "$POLL_SECONDS"
  done
}

# The files of the checkout as it is now, NUL-separated: uncommitted edits
# and new files included; what git ignores (virtual environments, workdirs)
# and tracked files deleted from the working tree left out.
checkout_files() {
  local file
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do
      if [[ -e "$ROOT/$file" || -L "$ROOT/$file" ]]; then
        printf '%s\0' "$file"
      fi
    done
}

cmd_setup() {
  require NAME ZONE
  local tarball jax_version install
  jax_version="$(sed -n 's/^jax==//p' "$ROOT/requirements.txt")"
  [[ -n "$jax_version" ]] || die "no 'jax==' pin in $ROOT/requirements.txt"
  check_ssh_agent
  if ((DRY_RUN)); then
    tarball="/tmp/$TARBALL_NAME"
    echo "# pack the files of $ROOT that git does not ignore into $tarball"
  else
    PACK_DIR="$(mktemp -d)"
    trap 'rm -rf "$PACK_DIR"' EXIT
    tarball="$PACK_DIR/$TARBALL_NAME"
    checkout_files | tar -C "$ROOT" --null -T - -czf "$tarball"
  fi
  gcloud_run compute tpus tpu-vm scp "$tarball" "$NAME:$TARBALL_NAME" \
    "${LOCATION[@]}" --worker=all
  # On a fresh VM, unattended-upgrades holds apt's locks for minutes:
  # apt_get waits for dpkg's lock (DPkg::Lock::Timeout), and tries again,
  # within a bound, while apt fails (the lists' lock has no such wait).
  install="$(remote_script "tarball=$TARBALL_NAME" \
    "jax_version=$jax_version" "apt_attempts=$APT_ATTEMPTS" <<'EOF'
set -euo pipefail
apt_get() {
  attempt=1
  until sudo DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout=60 "$@"; do
    if [ "$attempt" -ge "$apt_attempts" ]; then
      echo "tpu.sh setup: $(hostname): apt-get $1 failed $attempt times;" \
        "is apt still busy (ps aux | grep -i apt)? Rerun setup later." >&2
      return 1
    fi
    echo "tpu.sh setup: $(hostname): apt-get $1 failed (apt busy?);" \
      "trying again in 20 s" >&2
    attempt=$((attempt + 1))
    sleep 20
  done
}
if ! command -v python3.11 >/dev/null; then
  apt_get update -qq
  apt_get install -y -qq python3.11 python3.11-venv
fi
mkdir -p "$remote_dir"
tar -xzf "$tarball" -C "$remote_dir"
cd "$remote_dir"
python3.11 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt
python -m pip install -q "jax[tpu]==$jax_version" \
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
python -m pip install -q --no-deps -e .
EOF
)"
  on_workers all "$install"
}

cmd_train() {
  require NAME ZONE CONFIG WORKDIR
  if [[ "$WORKDIR" != gs://* ]]; then
    say "warning: --workdir $WORKDIR is not on GCS; on a pod every worker" \
      "must see the same directory"
  fi
  check_ssh_agent
  # All or none: a worker that cannot start would leave the others waiting
  # for it in the first collective.
  local ready main_command start
  ready="$(remote_script <<'EOF'
if [ ! -x "$remote_dir/.venv/bin/python" ]; then
  echo "tpu.sh: $(hostname) is not set up: launch/tpu.sh setup" >&2
  exit 1
fi
if running; then
  echo "tpu.sh: $(hostname) is still training (pid" \
    "$(cat "$remote_dir/train.pid")): launch/tpu.sh stop" >&2
  exit 1
fi
EOF
)"
  # Quoted for the worker's shell: each flag arrives as one argument.
  main_command="$(quote python -m mae_jax.main "--config=$CONFIG" \
    "--workdir=$WORKDIR" "${TRAIN_FLAGS[@]}")"
  start="$(remote_script <<'EOF'
if running; then
  echo "tpu.sh: $(hostname) is already training (pid" \
    "$(cat "$remote_dir/train.pid")): launch/tpu.sh stop" >&2
  exit 1
fi
cd "$remote_dir"
. .venv/bin/activate
EOF
)
nohup $main_command >> train.log 2>&1 < /dev/null &
echo \$! > train.pid"
  on_workers all "$ready" ||
    die "started on no worker: not every worker is ready (see above)"
  on_workers all "$start" ||
    die "could not start on every worker (see above); launch/tpu.sh stop" \
      "stops the workers that did start"
}

cmd_logs() {
  require NAME ZONE
  # --pid: tail ends when its ssh session does (Ctrl-C here), instead of
  # following the log on the worker forever.
  on_workers "$WORKER" "tail -n 200 -F --pid=\$PPID $REMOTE_DIR/train.log"
}

cmd_stop() {
  require NAME ZONE
  check_ssh_agent
  # The run saves a checkpoint before it exits: a TPU deleted before then
  # loses it. So wait, within a bound, until it has exited everywhere.
  local stop
  stop="$(remote_script "timeout=$STOP_TIMEOUT" <<'EOF'
if ! running; then
  echo "$(hostname): not training"
  exit 0
fi
pid="$(cat "$remote_dir/train.pid")"
kill -TERM "$pid"
waited=0
while running; do
  if [ "$waited" -ge "$timeout" ]; then
    echo "tpu.sh: $(hostname): pid $pid still runs $timeout s after SIGTERM;" \
      "see launch/tpu.sh logs, then rerun stop (--stop-timeout) or" \
      "kill -9 $pid on the worker" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done
echo "$(hostname): stopped"
EOF
)"
  on_workers all "$stop" ||
    die "the run has not exited on every worker (see above); do not delete" \
      "the TPU before it has"
}

cmd_status() {
  require NAME ZONE
  if_queued_resource describe_queued_resource describe_tpu_vm
}

describe_queued_resource() {
  gcloud_run compute tpus queued-resources describe "$NAME" "${LOCATION[@]}"
}

describe_tpu_vm() {
  gcloud_run compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}"
}

cmd_delete() {
  require NAME ZONE
  if_queued_resource delete_queued_resource delete_tpu_vm
}

delete_queued_resource() {
  # --force deletes the TPU VM the queued resource holds.
  gcloud_run compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" \
    --force --quiet
}

delete_tpu_vm() {
  gcloud_run compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
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
