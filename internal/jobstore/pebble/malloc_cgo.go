//go:build cgo

package pebble

/*
#include <malloc.h>

// A constructor, so that it runs when the program loads, before the Go
// runtime starts threads: glibc fixes its arena limit the first time a
// thread needs an arena, and ignores a later mallopt.
__attribute__((constructor)) static void oneArena(void) {
#ifdef M_ARENA_MAX
	mallopt(M_ARENA_MAX, 1);
#endif
}
*/
import "C"

// With cgo, Pebble allocates its block cache and memtables with C malloc.
// glibc gives each thread that allocates its own arena, up to eight per
// core, and an arena keeps the memory it once held: as blocks enter and
// leave the cache on different threads, the backlog benchmark's process held
// six arenas of 15 to 20 MB each beside the cache while a backlog drained
// (peak RSS 262 MB; 219 MB with one arena, at the same drain rate). One
// arena keeps the cache's memory in one place. Its lock is taken once per
// block allocated, which is not a hot path here.
