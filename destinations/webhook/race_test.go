//go:build race

package webhook

// raceEnabled: the race detector adds allocations of its own.
const raceEnabled = true
