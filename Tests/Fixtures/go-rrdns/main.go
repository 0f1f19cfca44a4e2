// rrdns: a small DNS-like round-robin resolver whose table sits behind a sync.RWMutex, built to
// reproduce a real outage: a query path that takes RLock and forgets RUnlock on one branch, and a
// periodic reload that takes Lock. Once the leaked read lock is held, the reload's Lock waits for it
// forever, and every new RLock queues behind the pending Lock (Go's RWMutex lets a waiting writer in
// first), so every query, and the control channel's ping, stops answering.
//
// It answers defib's ping protocol on $DEFIB_CONTROL_SOCKET ("ping TOKEN" -> "pong TOKEN", one line per
// connection) from a goroutine that resolves a name first, like any query — or, with LISTEN=HOST:PORT, the
// same line protocol on a TCP port, as a server that knows nothing of defib (watched by a tcp probe that
// sends "ping 1" and expects "pong 1"). After HANG_AFTER pings
// (default 5) the ping path asks for a name the table does not have: the branch that leaks. With
// HANG_ONCE=PATH only the instance that creates PATH does (its replacements keep answering).
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// table maps names to addresses, handed out round-robin.
type table struct {
	mu      sync.RWMutex
	records map[string][]string
	next    map[string]int
}

func newTable() *table {
	t := &table{records: map[string][]string{}, next: map[string]int{}}
	t.load()
	return t
}

func (t *table) load() {
	t.records["db.internal"] = []string{"10.0.0.1", "10.0.0.2"}
	t.records["cache.internal"] = []string{"10.0.1.1"}
}

// resolve returns the addresses of name. The bug: the not-found branch returns without RUnlock.
func (t *table) resolve(name string) ([]string, bool) {
	t.mu.RLock()
	addrs, ok := t.records[name]
	if !ok {
		return nil, false // the read lock leaks here
	}
	t.mu.RUnlock()
	return addrs, true
}

// reload rebuilds the table under the write lock, as a periodic refresh does.
func (t *table) reload() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.records = map[string][]string{}
	t.load()
}

func reloadLoop(t *table) {
	for {
		time.Sleep(100 * time.Millisecond)
		t.reload()
	}
}

// queryLoop stands for the resolver's clients: a lookup every few milliseconds.
func queryLoop(t *table, name string) {
	for {
		t.resolve(name)
		time.Sleep(20 * time.Millisecond)
	}
}

func servePing(t *table, c net.Conn, leak bool) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	name := "db.internal"
	if leak {
		name = "missing.internal"
	}
	t.resolve(name)
	fmt.Fprintf(c, "pong%s\n", strings.TrimSuffix(strings.TrimPrefix(line, "ping"), "\n"))
}

// shouldHang: always, or with HANG_ONCE only for the first instance to create the file.
func shouldHang() bool {
	once := os.Getenv("HANG_ONCE")
	if once == "" {
		return true
	}
	f, err := os.OpenFile(once, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func main() {
	hangAfter := 5
	if v, err := strconv.Atoi(os.Getenv("HANG_AFTER")); err == nil {
		hangAfter = v
	}
	var l net.Listener
	var err error
	if addr := os.Getenv("LISTEN"); addr != "" {
		l, err = net.Listen("tcp", addr)
	} else {
		path := os.Getenv("DEFIB_CONTROL_SOCKET")
		if path == "" {
			fmt.Fprintln(os.Stderr, "neither LISTEN nor DEFIB_CONTROL_SOCKET is set")
			os.Exit(2)
		}
		os.Remove(path)
		l, err = net.Listen("unix", path)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	t := newTable()
	go reloadLoop(t)
	for i := 0; i < 3; i++ {
		go queryLoop(t, "cache.internal")
	}
	fmt.Fprintf(os.Stderr, "rrdns pid=%d\n", os.Getpid())
	pings := 0
	for {
		c, err := l.Accept()
		if err != nil {
			continue
		}
		pings++
		go servePing(t, c, pings == hangAfter && shouldHang())
	}
}
