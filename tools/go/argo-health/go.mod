// Builds argo-health, our small checker that runs an Argo CD health.lua in gopher-lua,
// the Lua VM Argo CD embeds (see tools/ensure-bin and main.go).
module kong-fallback-operator.invalid/tools/argo-health

go 1.26

require github.com/yuin/gopher-lua v1.1.1
