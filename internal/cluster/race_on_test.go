//go:build race

package cluster

// raceOn: the race detector is on; sync.Pool then drops a random quarter
// of what is put back, so pooled paths allocate now and then.
const raceOn = true
