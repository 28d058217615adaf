//go:build relay_cpuprofile

// A build for profile-guided optimisation only (make pgo): with
// PGO_CPUPROFILE set, the relay records a CPU profile from its start
// until SIGUSR1, then writes it there. The shipped binary is built without
// this tag and links no runtime/pprof (TestBinary_NoPprofNoExpvarEndpoints).

package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func init() {
	path := os.Getenv("PGO_CPUPROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay: cpu profile: %v\n", err)
		os.Exit(1)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGUSR1)
	go func() {
		<-stop
		pprof.StopCPUProfile()
		_ = f.Close()
	}()
}
