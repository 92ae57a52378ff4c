//go:build !race

package fanouttest

// raceEnabled is true when the tests run with -race; see race.go.
const raceEnabled = false
