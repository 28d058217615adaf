package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestScratchDir_PerTreeAndLocked: two source trees get different scratch
// directories for the same slot (two worktrees' `make mutate` never copy
// over each other), and a second run from one tree waits for the first.
func TestScratchDir_PerTreeAndLocked(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	dirIn := func(tree string) (string, func()) {
		t.Helper()
		if err := os.Chdir(tree); err != nil {
			t.Fatal(err)
		}
		d, unlock, err := scratchDir(0)
		if err != nil {
			t.Fatal(err)
		}
		return d, unlock
	}
	da, unlockA := dirIn(a)
	db, unlockB := dirIn(b)
	unlockB()
	if da == db {
		t.Fatalf("trees %s and %s share scratch directory %s", a, b, da)
	}

	got := make(chan string)
	go func() {
		d, unlock, err := scratchDir(0) // still in b: a free slot
		if err == nil {
			unlock()
		}
		got <- d
	}()
	if d := <-got; d != db {
		t.Fatalf("tree b's slot 0 is %s, then %s", db, d)
	}
	if err := os.Chdir(a); err != nil {
		t.Fatal(err)
	}
	go func() {
		d, unlock, err := scratchDir(0) // tree a's slot 0 is held
		if err == nil {
			unlock()
		}
		got <- d
	}()
	select {
	case d := <-got:
		t.Fatalf("a second run from tree a took %s while the first held it", d)
	case <-time.After(200 * time.Millisecond):
	}
	unlockA()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the second run never got the slot after the first let go")
	}
}
