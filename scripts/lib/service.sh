# Shared by the scripts that start a server for the tests (sourced, not run).
#
# The rule for every such server: it runs detached with its own log file, the script waits for
# it to answer, and when it does not come up (it exited, or it did not answer in time) the
# script says which, prints the last lines of that server's own log, and fails. A fresh machine
# of the project's kind (root shell, nothing started) is the reference.

# service_start LOG COMMAND... : starts COMMAND detached (its own session, no terminal), with
# stdout and stderr appended to LOG; prints its process id.
service_start() {
    local log=$1
    shift
    mkdir -p "$(dirname "$log")"
    setsid "$@" </dev/null >>"$log" 2>&1 &
    echo $!
}

# service_log_size LOG : the log's size in bytes now (0 when missing), so that a failure shows
# only what this start wrote.
service_log_size() {
    stat -c %s "$1" 2>/dev/null || echo 0
}

# service_log_tail NAME LOG [FROM] : the last lines a server wrote to its log after byte FROM,
# indented, on stderr.
service_log_tail() {
    local name=$1 log=$2 from=${3:-0}
    if [ "$(service_log_size "$log")" -gt "$from" ]; then
        echo "last lines of $name's log ($log):" >&2
        tail -c +"$((from + 1))" "$log" | tail -n 40 | sed 's/^/    /' >&2
    else
        echo "$name wrote nothing to its log ($log)" >&2
    fi
}

# service_wait NAME PID LOG FROM SECONDS CHECK... : runs CHECK every half second until it
# succeeds. Fails at once when process PID has exited, or after SECONDS, with the last lines
# the server wrote to LOG after byte FROM.
service_wait() {
    local name=$1 pid=$2 log=$3 from=$4 seconds=$5
    shift 5
    local tries=$((seconds * 2))
    for _ in $(seq 1 "$tries"); do
        if "$@"; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            # One last look: it may have daemonized or answered as it exited.
            if "$@"; then return 0; fi
            echo "$name exited before it answered (process $pid)" >&2
            service_log_tail "$name" "$log" "$from"
            return 1
        fi
        sleep 0.5
    done
    echo "$name did not answer within ${seconds}s (process $pid still running)" >&2
    service_log_tail "$name" "$log" "$from"
    return 1
}
