#!/usr/bin/env bash
# Start Redis, PostgreSQL, RabbitMQ and MariaDB on 127.0.0.1 if they are down; install them (and Chromium)
# from Debian if absent. Anything that cannot be brought up stops the script: under CI no test may skip.
set -uo pipefail

apt_updated=0
need() {  # need COMMAND PACKAGE...
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}" >/dev/null
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # wait_port PORT NAME
  for _ in $(seq 1 60); do port_open "$1" && { echo "$2 is up on 127.0.0.1:$1"; return 0; }; sleep 1; done
  echo "$2 did not come up on 127.0.0.1:$1" >&2; return 1
}

if ! port_open 6379; then
  need redis-server redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
wait_port 6379 Redis || exit 1

if ! port_open 5432; then
  need pg_ctlcluster postgresql
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
wait_port 5432 PostgreSQL || exit 1

if ! port_open 5672; then
  need rabbitmq-server rabbitmq-server
  rabbitmq-server -detached
fi
# The event tests run on RabbitMQ too, and fail without it: a broker that does not come up stops here.
wait_port 5672 RabbitMQ || exit 1
# make test runs the suite in parallel processes; each one after the first has a vhost of its own
# (tests/fixtures/services.py), so no process empties or consumes another's queues.
rabbitmqctl -q await_startup >/dev/null || exit 1
for vhost in lethe-test-1 lethe-test-2; do
  rabbitmqctl -q list_vhosts | grep -qx "$vhost" || rabbitmqctl -q add_vhost "$vhost" >/dev/null || exit 1
  rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null || exit 1
done

# The sql target's contract runs on MariaDB too: a user that may create and drop only lethe_t_* databases.
if ! port_open 3306; then
  need mariadbd mariadb-server
  /etc/init.d/mariadb start >/dev/null
fi
wait_port 3306 MariaDB || exit 1
mariadb -uroot -e "CREATE USER IF NOT EXISTS 'lethe'@'127.0.0.1' IDENTIFIED BY 'lethe';
  GRANT ALL PRIVILEGES ON \`lethe\\_t\\_%\`.* TO 'lethe'@'127.0.0.1';" || exit 1

# Browser tests drive Debian's Chromium with Playwright (never a downloaded browser build). Under CI a
# missing browser fails the suite (tests/fixtures/ci.py), so a failed install stops here, saying why.
if [ ! -x /usr/bin/chromium ]; then
  if ! need chromium chromium || [ ! -x /usr/bin/chromium ]; then
    echo "chromium could not be installed (apt-get install chromium): the browser tests cannot run" >&2
    exit 1
  fi
fi
