#!/bin/sh
# make demo: two daemons on temporary sockets, a link between them, ls on
# both, a ping, and data through a tunnel. Cleans up after itself.
# Usage: demo.sh PATH-TO-r2
set -eu
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
dir=$(mktemp -d /tmp/r2-demo.XXXXXX)
pids=""
cleanup() {
	# the link first, and wait for both daemons to see it end; then the daemons
	if [ -n "${link:-}" ]; then
		kill "$link" 2>/dev/null || true
		i=0
		while [ $i -lt 100 ] && [ -n "$(r2 -s "$dir/b.sock" ls 2>/dev/null)" ]; do
			i=$((i + 1)); sleep 0.05
		done
	fi
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM
mkdir "$dir/bin"
ln -s "$bin" "$dir/bin/r2"
ln -s "$bin" "$dir/bin/r2d"
PATH=$dir/bin:$PATH
export PATH

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

# Wait (bounded) until a daemon answers on its socket.
answers() {
	i=0
	until r2 -s "$1" id >/dev/null 2>&1; do
		i=$((i + 1)); [ $i -lt 200 ] || { echo "daemon on $1 did not start" >&2; exit 1; }
		sleep 0.05
	done
}

say "r2d -s a.sock &  r2d -s b.sock \"tr a-z A-Z\" &   # two nodes; b's tunnel process is tr"
r2d -s "$dir/a.sock" -k "$dir/a.id" 2>"$dir/a.log" & pids="$pids $!"
r2d -s "$dir/b.sock" -k "$dir/b.id" "tr a-z A-Z" 2>"$dir/b.log" & pids="$pids $!"
answers "$dir/a.sock"; answers "$dir/b.sock"
A=$(r2 -s "$dir/a.sock" id); B=$(r2 -s "$dir/b.sock" id)
echo "a is $A"
echo "b is $B"

say "R2_SOCKET=a.sock r2 connect -n $B \"R2_SOCKET=b.sock r2 connect -\" &"
R2_SOCKET=$dir/a.sock r2 connect -n "$B" "R2_SOCKET=$dir/b.sock r2 connect -" & link=$!
i=0
until [ -n "$(r2 -s "$dir/a.sock" ls)" ]; do
	i=$((i + 1)); [ $i -lt 200 ] || { echo "no link" >&2; exit 1; }
	sleep 0.05
done

say "r2 -s a.sock ls"
r2 -s "$dir/a.sock" ls
say "r2 -s b.sock ls"
r2 -s "$dir/b.sock" ls
say "r2 -s b.sock ls $A   # asked over the network"
r2 -s "$dir/b.sock" ls "$A"
say "r2 -s a.sock ping -c 3 -i 0.2 $B"
r2 -s "$dir/a.sock" ping -c 3 -i 0.2 "$B"
say "echo 'hello through a tunnel' | r2 -s a.sock tunnel $B -"
echo 'hello through a tunnel' | r2 -s "$dir/a.sock" tunnel "$B" -
say "head -c 10000000 /dev/zero | r2 -s a.sock tunnel $B - | wc -c"
head -c 10000000 /dev/zero | r2 -s "$dir/a.sock" tunnel "$B" - | wc -c
echo
echo "demo done"
