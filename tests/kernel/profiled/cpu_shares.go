// Spends its CPU in three named functions, about 3:2:1, and prints the shares it
// measured itself (each call timed by its thread's CPU clock, over the
// process's CPU time), for the profiler's tests to compare with.
// Usage: cpu_shares_go SECONDS (SIGTERM ends it early, shares printed all the same)
package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

var sink uint64

func threadCPU() float64 {
	var ts syscall.Timespec
	const clockThreadCPUTimeID = 3
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0)
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func processCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

//go:noinline
func burnThree(n uint64) {
	for i := uint64(0); i < n; i++ {
		sink += i * i
	}
}

//go:noinline
func burnTwo(n uint64) {
	for i := uint64(0); i < n; i++ {
		sink += i * i
	}
}

//go:noinline
func burnOne(n uint64) {
	for i := uint64(0); i < n; i++ {
		sink += i * i
	}
}

func main() {
	runtime.LockOSThread()
	seconds, _ := strconv.ParseFloat(os.Args[1], 64)
	var stop atomic.Bool
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	go func() {
		<-terms
		stop.Store(true)
	}()
	const unit = 400000
	var spent [3]float64
	start := processCPU()
	begin := time.Now()
	for !stop.Load() && time.Since(begin).Seconds() < seconds {
		t := threadCPU()
		burnThree(3 * unit)
		t2 := threadCPU()
		burnTwo(2 * unit)
		t3 := threadCPU()
		burnOne(unit)
		t4 := threadCPU()
		spent[0] += t2 - t
		spent[1] += t3 - t2
		spent[2] += t4 - t3
	}
	total := processCPU() - start
	fmt.Printf("{\"pid\": %d, \"main.burnThree\": %.4f, \"main.burnTwo\": %.4f, \"main.burnOne\": %.4f}\n",
		os.Getpid(), spent[0]/total, spent[1]/total, spent[2]/total)
}
