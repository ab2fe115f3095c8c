#!/usr/libexec/kipvs/busybox sh
# /init of the kipvs test VM (embedded by test/vm; see README.md).
# It prepares the kernel the way a node would look, runs /kipvs/run.sh written
# by the host for this run, prints the exit marker and powers off.
# It runs under busybox-static, whose shell runs applets without exec: under
# TCG every exec of a dynamic binary costs ~0.1 s, and init needs ~20 of them.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# Files the run put under /tmp or /run (go test -exec from a checkout in
# /tmp) move onto the tmpfs mounted there.
for d in /tmp /run; do
	set -- $d/* $d/.[!.]*
	if [ -e "$1" ] || [ -e "$2" ]; then
		mv $d $d.initramfs && mkdir $d && mount -t tmpfs tmpfs $d
		cp -a $d.initramfs/. $d/ && rm -rf $d.initramfs
	else
		mount -t tmpfs tmpfs $d
	fi
done
mkdir -p /run/netns
ip link set lo up

. /kipvs/run.conf
stage() { [ "$KIPVS_DEBUG" = 1 ] && echo "kipvs-init: $(cut -d' ' -f1 /proc/uptime)s $*"; }
stage mounted

# Preload: autoload only happens when something triggers it, so a test that
# reads /proc/net/ip_vs first would otherwise see nothing.
. /etc/kipvs/modules.conf
mods=$KIPVS_MODULES
if [ "$KIPVS_NET" = 1 ]; then mods="$mods $KIPVS_NET_MODULES"; fi
if ! modprobe -a $mods; then
	for m in $mods; do modprobe "$m" || echo "kipvs-init: modprobe $m failed" >/dev/ttyS0; done
fi
stage modules loaded
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/ipv4/vs/conntrack || echo "kipvs-init: net.ipv4.vs.conntrack unavailable" >/dev/ttyS0

if [ "$KIPVS_NET" = 1 ]; then
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
	ip link set eth0 up
	ip addr add 10.0.2.15/24 dev eth0
fi

stage running test
(. /kipvs/run.sh) </dev/null
code=$?
stage test exited $code
# Opening and closing the tty waits until everything queued on it was sent,
# so the marker and the test output are on the wire before power-off.
echo "KIPVS-EXIT-$KIPVS_NONCE $code" >/dev/ttyS0
poweroff -f
