#!/bin/bash
# PID 1 of a throw-away firewalld sandbox; sandbox.py starts it as
#   unshare --net --mount --pid --fork --kill-child --mount-proc \
#     bash sandbox_init.sh --backend B --flush-all-on-reload F --etc-dir DIR --log-file FILE \
#       [--conf KEY=VALUE]... [--root DIR]
#
# It gives firewalld a private system D-Bus, a private copy of /etc/firewalld (DIR, bound over
# /etc/firewalld) and its own network namespace, so nothing touches the host's firewall.
#
# Talking to the harness, one line each way:
#   stdout  READY <pid>        firewalld (pid inside the namespace) is RUNNING
#           ERROR <message>    setup failed; the script exits
#           STARTED <pid>      answer to "start"
#           STOPPED <status>   answer to "stop": firewalld's exit status, or "none"
#   stdin   "start" / "stop"   commands; end of file ends the sandbox.
# Why stdin: the harness holds the only write end of the pipe. Whether it closes it or dies, we
# read EOF and exit, and since we are PID 1 of the pid namespace the kernel then SIGKILLs every
# other process in it (firewalld, dbus-daemon, listeners). Nothing outlives the sandbox.
# Why firewalld is started from here and not through nsenter: as our own child we can `wait`
# for it and get its exit status; a process started by nsenter would be a stranger to us.
set -euo pipefail
trap 'echo "ERROR line $LINENO: $BASH_COMMAND failed"' ERR

backend="" flush="" etc="" log="" root="" conf=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backend) backend=$2; shift 2 ;;
    --flush-all-on-reload) flush=$2; shift 2 ;;
    --etc-dir) etc=$2; shift 2 ;;
    --log-file) log=$2; shift 2 ;;
    --conf) conf+=("$2"); shift 2 ;;   # more firewalld.conf settings
    --root) root=$2; shift 2 ;;
    *) echo "ERROR unknown argument $1"; exit 2 ;;
  esac
done
if [[ -z $backend || -z $flush || -z $etc || -z $log ]]; then
  echo "ERROR --backend, --flush-all-on-reload, --etc-dir and --log-file are required"; exit 2
fi

# Sets KEY=VALUE in firewalld.conf, appending it when the file lacks the key (a commented-out
# default would otherwise leave firewalld on its built-in default without any error).
set_conf() {
  local key=$1 value=$2 file="$etc/firewalld.conf"
  if grep -q "^$key=" "$file"; then
    sed -i "s/^$key=.*/$key=$value/" "$file"
  else
    echo "$key=$value" >>"$file"
  fi
}

# firewalld's default log target ("mixed") appends warnings and errors to /var/log/firewalld
# whatever else it is told (and bullseye's 0.9.3 has no --log-target). Cover /var/log with a
# tmpfs and bind our log file onto its /var/log/firewalld: the host's /var/log stays untouched
# and the sandbox's log file gets those messages next to firewalld's stdout/stderr.
capture_var_log() {
  local var_log=$1
  mount -t tmpfs tmpfs "$var_log"
  touch "$var_log/firewalld"
  mount --bind "$log" "$var_log/firewalld"
}

mount --make-rprivate /           # unshare already does this; be explicit, mounts must not leak
mount -t tmpfs tmpfs /run          # private /run: bus socket, /run/firewalld, /run/netns
mkdir -p /run/dbus
cp -a "$root/etc/firewalld/." "$etc"/
rm -f "$etc/direct.xml" "$etc/direct.xml.old"   # the host's direct rules are not ours to load
set_conf FirewallBackend "$backend"
set_conf FlushAllOnReload "$flush"
for setting in "${conf[@]}"; do
  set_conf "${setting%%=*}" "${setting#*=}"
done
mount --bind "$etc" /etc/firewalld
# tproxy-firewalld records what it installed in /var/lib/tproxy-firewalld: private per sandbox.
mkdir -p /var/lib/tproxy-firewalld
mount -t tmpfs tmpfs /var/lib/tproxy-firewalld
: >"$log"
ip link set lo up

if [[ -z $root ]]; then
  capture_var_log /var/log
  dbus-daemon --system --fork --nopidfile </dev/null
  start_cmd=(firewalld --nofork --nopid)
else
  # A debootstrapped Debian root with another firewalld version (scripts/build-roots), run as a
  # chroot inside the same namespaces. Its /run is our /run, so the bus socket is the same file
  # on both sides and the host's firewall-cmd (and any D-Bus client, the CLI under test) talks
  # to the chroot's firewalld unchanged; its /etc/firewalld is our $etc, as on the host side.
  # Every mount is in our private mount namespace: the root on disk is only read (roots are
  # shared by every sandbox, and cached between runs), and all of it vanishes with us.
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  mount --bind /run "$root/run"
  mount --bind "$etc" "$root/etc/firewalld"
  mount --bind /tmp "$root/tmp"
  # `tproxy-firewalld --root <root>` (offline) records its state under the root: private too.
  [[ -d $root/var/lib/tproxy-firewalld ]] || mkdir -p "$root/var/lib/tproxy-firewalld"
  mount -t tmpfs tmpfs "$root/var/lib/tproxy-firewalld"
  capture_var_log "$root/var/log"
  chroot "$root" dbus-daemon --system --fork --nopidfile </dev/null
  start_cmd=(chroot "$root" firewalld --nofork --nopid)
fi

fw_pid=""
start_firewalld() {
  "${start_cmd[@]}" >>"$log" 2>&1 </dev/null &
  fw_pid=$!  # stop it by this id, never by name: other sandboxes run their own firewalld
}

# SIGTERM lets firewalld tear its rules down as on a real stop; SIGKILL after 15 s keeps the
# harness from hanging on a wedged daemon.
stop_firewalld() {
  if [[ -z $fw_pid ]] || ! kill -0 "$fw_pid" 2>/dev/null; then
    fw_pid=""
    echo "STOPPED none"
    return
  fi
  kill -TERM "$fw_pid"
  for _ in $(seq 150); do
    kill -0 "$fw_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$fw_pid" 2>/dev/null || true
  local status=0
  wait "$fw_pid" || status=$?
  fw_pid=""
  echo "STOPPED $status"
}

# Waits (60 s at most) until firewall-cmd reports RUNNING; fails if firewalld died or settled
# in another state.
wait_running() {
  local deadline=$((SECONDS + 60)) state=""
  while ((SECONDS < deadline)); do
    kill -0 "$fw_pid" 2>/dev/null || { echo "ERROR firewalld exited, see $log"; return 1; }
    state=$(firewall-cmd --state 2>/dev/null </dev/null) || true
    case $state in
      running) return 0 ;;
      failed) echo "ERROR firewalld is in state FAILED, see $log"; return 1 ;;
    esac
    sleep 0.1
  done
  echo "ERROR firewalld not running after 60 s (last state: ${state:-none}), see $log"
  return 1
}

start_firewalld
trap - ERR
wait_running || exit 1
echo "READY $fw_pid"

# From here on a failing command must not end the sandbox: each answer reports its own result.
set +e
while IFS= read -r command; do
  case $command in
    start)
      if [[ -n $fw_pid ]] && kill -0 "$fw_pid" 2>/dev/null; then
        echo "ERROR firewalld is already running as $fw_pid"
      else
        start_firewalld
        echo "STARTED $fw_pid"
      fi
      ;;
    stop) stop_firewalld ;;
    *) echo "ERROR unknown command: $command" ;;
  esac
done
exit 0
