// Command envoy-protoset writes the descriptors of Envoy's ext_authz v3
// service (envoy.service.auth.v3.Authorization) and everything it imports
// as a protoset, so ghz can call Keygate's ext_authz Check: Keygate's
// reflection lists the service but cannot describe it (the envoy-types
// crate ships no descriptors). The descriptors come from Envoy's own Go
// bindings.
//
//	go run . OUT.protoset
package main

import (
	"fmt"
	"os"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: envoy-protoset OUT.protoset")
		os.Exit(2)
	}
	seen := map[string]bool{}
	set := &descriptorpb.FileDescriptorSet{}
	var add func(protoreflect.FileDescriptor)
	add = func(file protoreflect.FileDescriptor) {
		if seen[file.Path()] {
			return
		}
		seen[file.Path()] = true
		imports := file.Imports()
		for i := 0; i < imports.Len(); i++ {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(file))
	}
	add(authv3.File_envoy_service_auth_v3_external_auth_proto)
	out, err := proto.Marshal(set)
	if err == nil {
		err = os.WriteFile(os.Args[1], out, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "envoy-protoset:", err)
		os.Exit(1)
	}
}
