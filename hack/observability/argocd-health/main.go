// Command argocd-health runs Argo CD health checks the way Argo CD's controller does (argo-cd util/lua/lua.go):
// gopher-lua with SkipOpenLibs and only the package, base and table libraries (Argo CD adds a safe os, which the
// kubetune script does not use), the object as the global `obj` decoded as Argo CD decodes it, the returned table
// encoded with gopher-json and read as {status, message}. It runs every case of a health_test.yaml and prints one
// JSON line per case: {"inputPath", "status", "message", "error"}.
//
//	go run . ../../../argocd/resource_customizations/kubetune.io/FineTuneJob
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/yaml"
)

type healthTest struct {
	Tests []struct {
		InputPath string `json:"inputPath"`
	} `json:"tests"`
}

type result struct {
	InputPath string `json:"inputPath"`
	Status    string `json:"status"`
	Message   string `json:"message"`
	Error     string `json:"error,omitempty"`
}

// decodeValue is Argo CD's conversion of an unstructured object into Lua values.
func decodeValue(L *lua.LState, value interface{}) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case int64:
		return lua.LNumber(converted)
	case []interface{}:
		arr := L.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(L, item))
		}
		return arr
	case map[string]interface{}:
		tbl := L.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(L, item))
		}
		return tbl
	}
	return lua.LNil
}

func run(script string, obj map[string]interface{}) (result, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return result{}, err
		}
	}
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return result{}, err
	}
	ret := l.Get(-1)
	if ret.Type() != lua.LTTable {
		return result{}, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	encoded, err := luajson.Encode(ret)
	if err != nil {
		return result{}, err
	}
	var out result
	return out, json.Unmarshal(encoded, &out)
}

func main() {
	dir := os.Args[1]
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	check(err)
	raw, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
	check(err)
	var tests healthTest
	check(yaml.Unmarshal(raw, &tests))
	for _, t := range tests.Tests {
		input, err := os.ReadFile(filepath.Join(dir, t.InputPath))
		check(err)
		var obj map[string]interface{}
		check(yaml.Unmarshal(input, &obj))
		out, err := run(string(script), obj)
		out.InputPath = t.InputPath
		if err != nil {
			out.Error = err.Error()
		}
		line, _ := json.Marshal(out)
		fmt.Println(string(line))
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
