// Command chartrepo serves one directory read-only over HTTP on a loopback address.
package main

import (
	"flag"
	"log"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (keep it on loopback)")
	dir := flag.String("dir", ".", "directory to serve")
	flag.Parse()
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s", r.Method, r.URL.Path)
		http.FileServer(http.Dir(*dir)).ServeHTTP(w, r)
	})
	server := &http.Server{Addr: *addr, Handler: logged, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("serving %s on http://%s", *dir, *addr)
	log.Fatal(server.ListenAndServe())
}
