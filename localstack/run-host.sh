#!/usr/bin/env bash
# Run LocalStack (S3, SNS, SQS) directly on this machine, without Docker, bound to
# 127.0.0.1 only, then create evsync's bucket, topic and queues with init/setup.sh.
#
#   localstack/run-host.sh               foreground; Ctrl-C (or exit) stops LocalStack
#   localstack/run-host.sh --background  leave it running; pid in localstack/.data/localstack.pid
#   localstack/run-host.sh --stop        stop a LocalStack started with --background
#
# Environment: PORT (default 4566), PYTHON (default python3, must be 3.9-3.11 for
# localstack-core 4.13.1's dependencies here), plus BUCKET, TOPIC and INSTANCES
# for init/setup.sh.
#
# The first run creates localstack/.venv-localstack (~500 MB, about two minutes):
# localstack-core 4.13.1, the newest release that runs on Python 3.11, with the pins
# its unpinned dependencies need. State lives in memory (community LocalStack), so
# setup.sh runs on every start; logs and scratch files go to localstack/.data.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${PORT:-4566}
PYTHON=${PYTHON:-python3}
VENV=$HERE/.venv-localstack
DATA=$HERE/.data
PIDFILE=$DATA/localstack.pid
LOGFILE=$DATA/localstack.log
ENDPOINT=http://127.0.0.1:$PORT
LOCALSTACK_VERSION=4.13.1
STAMP=$VENV/.installed-$LOCALSTACK_VERSION

mode=foreground
case "${1:-}" in
    "") ;;
    --background | -b) mode=background ;;
    --stop) mode=stop ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--background | --stop]" >&2; exit 2 ;;
esac

say() { printf 'run-host: %s\n' "$*" >&2; }

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || { say "LocalStack (pid $pid) stopped"; return 0; }
        sleep 0.5
    done
    say "LocalStack (pid $pid) did not stop in 20 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

if [ "$mode" = stop ]; then
    if pid=$(running_pid); then
        stop_pid "$pid"
    else
        say "no LocalStack running from $PIDFILE"
    fi
    rm -f "$PIDFILE"
    exit 0
fi

if pid=$(running_pid); then
    say "LocalStack already running (pid $pid); stop it with: $0 --stop"
    exit 1
fi
if curl -s -o /dev/null "$ENDPOINT/" 2>/dev/null; then
    say "something already answers on 127.0.0.1:$PORT; pick another PORT"
    exit 1
fi

# --- the venv, once
if [ ! -f "$STAMP" ]; then
    say "installing localstack-core $LOCALSTACK_VERSION into $VENV (takes about two minutes)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # 2026.x and 4.14 use PEP 695 syntax (Python 3.12+); 4.13.1 needs these pins.
    "$VENV/bin/pip" install --quiet "localstack-core[runtime]==$LOCALSTACK_VERSION" \
        'cbor2<6' 'pyopenssl<24.3' 'cryptography<44' service_identity
    touch "$STAMP"
fi

# --- start
mkdir -p "$DATA/fs" "$DATA/vol"
lsenv=(
    GATEWAY_SERVER=hypercorn                # the default (twisted) gateway binds 0.0.0.0
    GATEWAY_LISTEN="127.0.0.1:$PORT"
    LOCALSTACK_HOST="127.0.0.1:$PORT"       # host:port in the URLs LocalStack hands out
    DNS_ADDRESS=0                           # no DNS server on 0.0.0.0:53
    SERVICES=s3,sqs,sns
    SQS_ENDPOINT_STRATEGY=path              # queue URLs http://127.0.0.1:PORT/queue/REGION/ACCOUNT/NAME
    SKIP_SSL_CERT_DOWNLOAD=1
    DISABLE_EVENTS=1                        # no analytics
    FILESYSTEM_ROOT="$DATA/fs"
    LOCALSTACK_VOLUME_DIR="$DATA/vol"
    TMPDIR="$DATA/fs/tmp"
)
mkdir -p "$DATA/fs/tmp"
say "starting LocalStack on $ENDPOINT (log: $LOGFILE)"
# Its own session: a Ctrl-C in this terminal reaches only this script, which then
# sends LocalStack one SIGTERM (SIGINT followed by SIGTERM can hang its shutdown).
# setsid execs in place here (a background job is no group leader), so $! is its pid.
env "${lsenv[@]}" setsid "$VENV/bin/python" -m localstack.runtime.main \
    >"$LOGFILE" 2>&1 </dev/null &
LS_PID=$!
echo "$LS_PID" >"$PIDFILE"

cleanup() {
    trap - EXIT INT TERM
    stop_pid "$LS_PID"
    rm -f "$PIDFILE"
}
fail() {
    say "$*"
    tail -n 30 "$LOGFILE" >&2 || true
    cleanup
    exit 1
}
if [ "$mode" = foreground ]; then
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
fi

# --- wait for health
for i in $(seq 1 120); do
    kill -0 "$LS_PID" 2>/dev/null || fail "LocalStack exited during start-up"
    if health=$(curl -fsS "$ENDPOINT/_localstack/health" 2>/dev/null); then
        break
    fi
    [ "$i" -eq 120 ] && fail "no health answer from $ENDPOINT after 60 s"
    sleep 0.5
done
say "healthy: $(printf '%s' "$health" | "$VENV/bin/python" -c \
    'import json, sys; s = json.load(sys.stdin)["services"]; print(", ".join(f"{k} {s.get(k)}" for k in ("s3", "sns", "sqs")))' \
    2>/dev/null || printf '%s' "$health")"

# --- resources. Without an aws CLI on PATH use the venv's: localstack-core[runtime]
# brings awscli; should it be missing, install the release matching the venv's
# botocore so LocalStack's own dependencies are left alone.
if ! command -v awslocal >/dev/null 2>&1 && ! command -v aws >/dev/null 2>&1; then
    if [ ! -x "$VENV/bin/aws" ]; then
        say "no aws CLI on PATH; installing awscli into $VENV"
        botocore=$("$VENV/bin/python" -c 'import botocore; print(botocore.__version__)')
        "$VENV/bin/pip" install --quiet awscli "botocore==$botocore" \
            || fail "could not install awscli"
    fi
    PATH=$PATH:$VENV/bin
fi
AWS_ENDPOINT_URL=$ENDPOINT sh "$HERE/init/setup.sh" || fail "init/setup.sh failed"

cat >&2 <<EOF
run-host: LocalStack is ready on $ENDPOINT (S3, SNS, SQS), pid $LS_PID
run-host: credentials: AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test, region us-east-1
EOF
if [ "$mode" = background ]; then
    say "stop it with: $0 --stop   (or kill $LS_PID)"
    exit 0
fi
say "running in the foreground; Ctrl-C stops it"
wait "$LS_PID" || true
say "LocalStack exited; see $LOGFILE"
