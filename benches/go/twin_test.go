// Package goctxtwin holds Go twins of goctx benchmarks that Go's own
// context/benchmark_test.go has no exact counterpart for. Run them with
//
//	go test -run '^$' -bench . -benchmem
//
// or through benches/compare.sh, which puts them next to goctx's numbers.
package goctxtwin

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
)

// newShared returns the tree of Go's BenchmarkCommonParentCancel: a
// cancellable context under a value root.
func newShared() (context.Context, context.CancelFunc) {
	root := context.WithValue(context.Background(), "key", "value")
	return context.WithCancel(root)
}

// BenchmarkCommonParentCancelNoWork is Go's BenchmarkCommonParentCancel
// without its busy-work loops: derive WithCancel from the shared parent, one
// Value lookup that walks through the new cancelCtx to the value root,
// cancel. All GOMAXPROCS workers register and unregister with the same
// parent, so they contend on its mutex and children map.
// goctx: common_parent_cancel/goctx/nowork.
func BenchmarkCommonParentCancelNoWork(b *testing.B) {
	shared, sharedCancel := newShared()
	defer sharedCancel()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithCancel(shared)
			if v, _ := ctx.Value("key").(string); v != "value" {
				b.Fatal("bad value")
			}
			cancel()
		}
	})
}

// BenchmarkCommonParentCancelNoWorkSerial is the same iteration on one
// goroutine (no contention): the analogue of a plain criterion b.iter loop.
// goctx: common_parent_cancel/goctx/nowork_serial.
func BenchmarkCommonParentCancelNoWorkSerial(b *testing.B) {
	shared, sharedCancel := newShared()
	defer sharedCancel()
	for b.Loop() {
		ctx, cancel := context.WithCancel(shared)
		if v, _ := ctx.Value("key").(string); v != "value" {
			b.Fatal("bad value")
		}
		cancel()
	}
}

// fired counts runs of bump, the AfterFunc callback: a package-level
// function, so that registering it allocates no closure.
var fired atomic.Uint64

func bump() { fired.Add(1) }

// BenchmarkAfterFuncRegisterStop registers an AfterFunc on a live,
// long-lived context and stops it at once (stop wins): register and
// withdraw one callback. Go's suite has no AfterFunc benchmark.
// goctx: after_func/goctx/register_stop.
func BenchmarkAfterFuncRegisterStop(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before := fired.Load()
	for b.Loop() {
		stop := context.AfterFunc(ctx, bump)
		if !stop() {
			b.Fatal("stop lost to a cancellation")
		}
	}
	if fired.Load() != before {
		b.Fatal("a stopped callback ran")
	}
}

// BenchmarkAfterFuncRegisterFire derives a child of a live parent, registers
// an AfterFunc on it, cancels the child and waits until the callback has run
// (Go runs it on a new goroutine; the wait yields with runtime.Gosched, so
// that goroutine may run on this P). goctx: after_func/goctx/register_fire.
func BenchmarkAfterFuncRegisterFire(b *testing.B) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	for b.Loop() {
		before := fired.Load()
		child, cancel := context.WithCancel(parent)
		context.AfterFunc(child, bump)
		cancel()
		for fired.Load() == before {
			runtime.Gosched()
		}
	}
}
