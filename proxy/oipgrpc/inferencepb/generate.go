// Package inferencepb is the generated Go code of grpc_service.proto: the
// Open Inference Protocol's gRPC messages and GRPCInferenceService (package
// inference). Do not edit the .pb.go files: edit the .proto and run go
// generate; TestGeneratedIsCurrent fails when they differ from what protoc
// makes of it.
package inferencepb

//go:generate sh gen.sh
