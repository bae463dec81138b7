# shellcheck shell=sh
# Helpers shared by Berth's guest init scripts (sourced, not executed).
#
# Console protocol (see docs/guest-image.md): every line the host parses is
# written with a single printf to /dev/console:
#   BERTH-STAGE <stage> <uptime-seconds>
#   BERTH-FAIL <stage> <reason>
#   BERTH-WARN <stage> <message>
#   BERTH-INFO <stage> <message>

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# Used by the scripts that source this file.
# shellcheck disable=SC2034
BERTH_FWCFG=/sys/firmware/qemu_fw_cfg/by_name/opt/berth
# shellcheck disable=SC2034
BERTH_RUN=/run/berth
# shellcheck disable=SC2034
BERTH_LOG=/var/log/berth

berth_uptime() {
    read -r _up _ < /proc/uptime
    printf '%s' "$_up"
}

berth_console() {
    # One write() per line so kernel messages cannot split it.
    printf '%s\n' "$*" > /dev/console
}

berth_stage() { berth_console "BERTH-STAGE $1 $(berth_uptime)"; }
berth_warn() { _s=$1; shift; berth_console "BERTH-WARN $_s $*"; }
berth_info() { _s=$1; shift; berth_console "BERTH-INFO $_s $*"; }

# berth_fail STAGE REASON: report, show the relevant log tail, stop booting.
# REASON is a single word (no spaces) so the line stays machine-readable.
berth_fail() {
    berth_console "BERTH-FAIL $1 $2"
    if [ -n "${3:-}" ] && [ -f "$3" ]; then
        tail -n 20 "$3" | while IFS= read -r _line; do
            berth_console "berth: $_line"
        done
    fi
    exit 1
}

# berth_fwcfg KEY DEST: copy opt/berth/KEY from QEMU fw_cfg to DEST (mode 0600).
# Returns 1 when the key is absent or empty.
berth_fwcfg() {
    _src="$BERTH_FWCFG/$1/raw"
    [ -r "$_src" ] || return 1
    (umask 077 && cat "$_src" > "$2") || return 1
    [ -s "$2" ] || { rm -f "$2"; return 1; }
    return 0
}

# berth_wait SECONDS CMD...: retry CMD every 0.2 s until it succeeds.
berth_wait() {
    _limit=$(($1 * 5))
    shift
    _n=0
    until "$@" > /dev/null 2>&1; do
        _n=$((_n + 1))
        [ "$_n" -lt "$_limit" ] || return 1
        sleep 0.2
    done
    return 0
}
