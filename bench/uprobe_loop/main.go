// uprobe_loop: calls main.probed 200,000 times and prints the time per call,
// for bench/uprobe_cost.py (a uprobe at its entry vs on its stack check's JBE).
package main

import (
	"fmt"
	"time"
)

//go:noinline
func leaf(x int) int { return x*3 + 1 }

//go:noinline
func probed(x int) int { return leaf(x) + 1 }

func main() {
	s := 0
	t := time.Now()
	for i := 0; i < 200000; i++ {
		s = probed(s)
	}
	fmt.Printf("%.3f us per call (%d)\n", float64(time.Since(t).Nanoseconds())/2e5/1e3, s&1)
}
