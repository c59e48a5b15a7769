// An HTTPS client on Go's crypto/tls (no OpenSSL): the collector must say that
// it cannot read this process's TLS. Usage: go_tls_client URL COUNT PAUSE_SECONDS
// (it stays alive PAUSE_SECONDS after its requests, as services do, to be examined)
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	count, _ := strconv.Atoi(os.Args[2])
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the test's self-signed certificate
	}}
	for i := 0; i < count; i++ {
		resp, err := client.Get(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	pause, _ := strconv.Atoi(os.Args[3])
	time.Sleep(time.Duration(pause) * time.Second)
}
