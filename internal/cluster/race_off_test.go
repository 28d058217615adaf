//go:build !race

package cluster

// raceOn: the race detector is on (see race_on_test.go).
const raceOn = false
