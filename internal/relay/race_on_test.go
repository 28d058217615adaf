//go:build race

package relay

// raceEnabled: the race detector is on (its sync.Pool drops a quarter of
// what is put back, so pooled buffers are sometimes made anew).
const raceEnabled = true
