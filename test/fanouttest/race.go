//go:build race

package fanouttest

// raceEnabled is true when the tests run with -race; Build then builds the
// binary with -race too, so a data race inside fanout serve fails the test
// (the server exits with status 66 on SIGTERM after reporting it).
const raceEnabled = true
