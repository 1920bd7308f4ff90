package dnsserver

import (
	"hash/maphash"
	"maps"
)

// shardMap is a map split into shards by key hash, so that a snapshot
// made from another with a few keys changed copies only the shards those
// keys fall in (Resolver.UpdateHosts) and shares the rest. A shardMap is
// never changed once a snapshot holds it; copy it (a value copy shares
// every shard) and change the copy through a shardEdit.
type shardMap[K comparable, V any] struct {
	m [mapShards]map[K]V
}

// mapShards is the number of shards: at 10,000 names, a change copies a
// shard of about 40.
const mapShards = 256

var shardSeed = maphash.MakeSeed()

func shardOf[K comparable](k K) int {
	return int(maphash.Comparable(shardSeed, k) % mapShards)
}

func (s *shardMap[K, V]) get(k K) V {
	return s.m[shardOf(k)][k]
}

// shardEdit changes a shardMap, copying each shard the first time it
// writes to it.
type shardEdit[K comparable, V any] struct {
	s     *shardMap[K, V]
	owned [mapShards]bool
}

func (e *shardEdit[K, V]) shard(k K) map[K]V {
	i := shardOf(k)
	if !e.owned[i] {
		if e.s.m[i] == nil {
			e.s.m[i] = make(map[K]V)
		} else {
			e.s.m[i] = maps.Clone(e.s.m[i])
		}
		e.owned[i] = true
	}
	return e.s.m[i]
}

func (e *shardEdit[K, V]) set(k K, v V) { e.shard(k)[k] = v }

func (e *shardEdit[K, V]) del(k K) {
	if _, ok := e.s.m[shardOf(k)][k]; ok {
		delete(e.shard(k), k)
	}
}
