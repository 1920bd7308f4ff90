package cli

import (
	"net/url"
	"os"
	"os/exec"
	"runtime"

	"golang.org/x/term"
)

// openBrowser opens u in the desktop's browser when there is a person at
// a terminal with a desktop (a display on Linux, macOS or Windows); else
// it does nothing: the URL is printed anyway. Only http(s) URLs open.
func openBrowser(u string) {
	if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") {
		return
	}
	if !term.IsTerminal(int(os.Stderr.Fd())) || os.Getenv("BEAM_NO_BROWSER") != "" {
		return
	}
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return
		}
		cmd = exec.Command("xdg-open", u)
	}
	if cmd.Start() == nil {
		go cmd.Wait()
	}
}
