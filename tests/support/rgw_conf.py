"""The ``ceph.conf`` of the throw-away one-node cluster ``RadosGateway`` boots (``rgw_cluster.py``).

Everything lives under ``root``: 1 monitor, 1 BlueStore OSD on a sparse block file, no mgr,
``auth none``, msgr2 only on 127.0.0.1, pools of size 1, small caches, radosgw's beast frontend.
"""

from __future__ import annotations

from pathlib import Path

BLOCK_SIZE = 8 * 1024**3  # sparse; only what is written is allocated


def ceph_conf(
    root: Path, fsid: str, *, mon_port: int, rgw_port: int, block_size: int = BLOCK_SIZE, log: bool = False
) -> str:
    """The config text; ``log`` raises the daemons' debug levels."""
    debug = (
        "debug rgw = 20\ndebug ms = 1\ndebug osd = 10\ndebug mon = 10\n"
        if log
        else "debug rgw = 1/5\ndebug ms = 0/0\ndebug rocksdb = 0/5\n"
    )
    return f"""\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.1/32
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
log to stderr = false
err to stderr = true
log max recent = 500
mon cluster log file = {root}/log/$cluster.$channel.log
mon debug dump location = {root}/log/$name.tdump
crash dir = {root}/crash
keyring = {root}/keyring
mon data = {root}/mon
osd data = {root}/osd0
mgr data = {root}/mgr
mds data = {root}/mds
rgw data = {root}/rgw
rgw luarocks location = {root}/luarocks
immutable object cache path = {root}/cache
immutable object cache sock = {root}/run/immutable_object_cache_sock
rbd persistent cache path = {root}/cache
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
paxos propose interval = 0.05
paxos min wait = 0.01
mon data avail warn = 2
mon data avail crit = 1
mon osd full ratio = 0.99
mon osd backfillfull ratio = 0.98
mon osd nearfull ratio = 0.97
osd failsafe full ratio = 0.995
{debug}
[mon]
mon data = {root}/mon

[osd]
osd data = {root}/osd0
osd objectstore = bluestore
bluestore block path = {root}/osd0.block
bluestore block size = {block_size}
bluestore block create = true
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
osd op num shards = 2
osd op num threads per shard = 1

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw thread pool size = 64
rgw enable usage log = false
rgw dynamic resharding = false
rgw run sync thread = false
rgw enable ops log = false
rgw dns name = 127.0.0.1
"""
