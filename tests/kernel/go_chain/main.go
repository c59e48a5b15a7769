// go_chain PORT [NEXT_PORT]: an uninstrumented hop of a request chain. GET
// /any/path calls 127.0.0.1:NEXT_PORT/any/path (when given) and answers with
// what it got; the last hop waits a moment so requests overlap, and answers
// "leaf /any/path".
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	port := os.Args[1]
	next := ""
	if len(os.Args) > 2 {
		next = "http://127.0.0.1:" + os.Args[2]
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if next == "" {
			time.Sleep(2 * time.Millisecond)
			fmt.Fprintf(w, "leaf %s\n", r.URL.Path)
			return
		}
		resp, err := client.Get(next + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		w.Write(body)
	})
	if err := http.ListenAndServe("127.0.0.1:"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
