package nslab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
)

// Environment of a re-executed test binary running a helper.
const (
	envHelper     = "NSLAB_HELPER"      // the helper's name
	envHelperArgs = "NSLAB_HELPER_ARGS" // its arguments, a JSON array of strings
)

// HelperFunc is the body of a helper process. It runs inside a namespace in a
// re-executed test binary; ctx ends when the process gets SIGTERM or SIGINT.
// Standard output and error go to the [Proc]. Returning nil exits with
// status 0, an error prints it and exits with status 1.
type HelperFunc func(ctx context.Context, args []string) error

var helpers struct {
	sync.Mutex
	m       map[string]HelperFunc
	builtin map[string]bool // dispatched from init, before any test code
}

// RegisterHelper registers a helper under name for [Host.StartHelper]. Call
// it from an init function or a package-level variable of a _test.go file,
// so that it is registered both in the test process and in the re-executed
// one, and declare TestNSLabHelperProcess (see the package documentation).
// It returns true, for use as var _ = nslab.RegisterHelper(...). It panics
// if name is already registered.
func RegisterHelper(name string, fn HelperFunc) bool {
	helpers.Lock()
	defer helpers.Unlock()
	if _, dup := helpers.m[name]; dup {
		panic("nslab: helper " + name + " registered twice")
	}
	if helpers.m == nil {
		helpers.m = map[string]HelperFunc{}
	}
	helpers.m[name] = fn
	return true
}

func registerBuiltin(name string, fn HelperFunc) {
	RegisterHelper(name, fn)
	helpers.Lock()
	defer helpers.Unlock()
	if helpers.builtin == nil {
		helpers.builtin = map[string]bool{}
	}
	helpers.builtin[name] = true
}

func helperKnown(name string) bool {
	helpers.Lock()
	defer helpers.Unlock()
	_, ok := helpers.m[name]
	return ok
}

// RunHelperProcess runs the helper named in the environment and exits the
// process. Without that environment (the normal test run) it returns at once.
// Call it from TestNSLabHelperProcess in every test package that registers
// helpers of its own.
func RunHelperProcess(t *testing.T) {
	if os.Getenv(envHelper) == "" {
		return
	}
	os.Exit(runHelperFromEnv())
}

func init() {
	name := os.Getenv(envHelper)
	helpers.Lock()
	builtin := helpers.builtin[name]
	helpers.Unlock()
	if name != "" && builtin {
		// A built-in helper: run it before the testing package starts,
		// so it works in any test binary importing nslab.
		os.Exit(runHelperFromEnv())
	}
}

func runHelperFromEnv() int {
	name := os.Getenv(envHelper)
	helpers.Lock()
	fn := helpers.m[name]
	helpers.Unlock()
	if fn == nil {
		fmt.Fprintf(os.Stderr, "nslab: helper %q is not registered in this test binary\n", name)
		return 2
	}
	var args []string
	if s := os.Getenv(envHelperArgs); s != "" {
		if err := json.Unmarshal([]byte(s), &args); err != nil {
			fmt.Fprintf(os.Stderr, "nslab: helper %q: decode %s: %v\n", name, envHelperArgs, err)
			return 2
		}
	}
	// Programs the helper starts are not helpers.
	os.Unsetenv(envHelper)
	os.Unsetenv(envHelperArgs)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := fn(ctx, args); err != nil {
		fmt.Fprintf(os.Stderr, "nslab: helper %q: %v\n", name, err)
		return 1
	}
	return 0
}
