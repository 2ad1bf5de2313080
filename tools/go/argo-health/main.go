// argo-health runs an Argo CD resource health script the way Argo CD does: in gopher-lua,
// with the object as the global table `obj`, expecting a table {status=..., message=...}.
//
//	argo-health HEALTH_LUA < object.json
//
// prints {"status": "...", "message": "..."} as one JSON line. It exits 1 when the script
// fails, returns something else than a table, or returns no status.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "argo-health:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: argo-health HEALTH_LUA < object.json")
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	var obj map[string]any
	dec := json.NewDecoder(os.Stdin)
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("reading the object from stdin: %w", err)
	}

	// NB: Argo CD opens only the package, base and table libraries (and a reduced os);
	// the script must not need more, so neither do we give it more.
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		L.Push(L.NewFunction(lib.fn))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(string(script)); err != nil {
		return err
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return fmt.Errorf("the script returned %s, not a table", L.Get(-1).Type())
	}
	status := ret.RawGetString("status")
	if status.Type() != lua.LTString {
		return fmt.Errorf("the script returned no status")
	}
	out, err := json.Marshal(map[string]string{
		"status":  status.String(),
		"message": lua.LVAsString(ret.RawGetString("message")),
	})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// toLua converts decoded JSON into Lua values: objects and arrays become tables (arrays
// 1-based), null becomes nil.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range v {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return lua.LString(v.String())
		}
		return lua.LNumber(f)
	default:
		return lua.LNil
	}
}
