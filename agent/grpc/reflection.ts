/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha ServerReflectionInfo),
 * for grpcurl, Postman and grpcio-reflection's client: the names of the
 * services served, and for a file name or a symbol, the FileDescriptorProto of
 * the .proto file that declares it and of every file it imports, so a client
 * can build requests with no .proto files of its own. Built once at start from
 * the files the agent serves (protos.ts).
 */
import { existsSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import protobuf from 'protobufjs';
import descriptor from 'protobufjs/ext/descriptor.js';
import type { ResponseStream } from './call.js';
import { Status } from './status.js';

/** protobufjs bundles the well-known types without their file names; these are the files protoc knows them by. */
const WELL_KNOWN: Record<string, string> = {
  Any: 'any', Duration: 'duration', Empty: 'empty', FieldMask: 'field_mask', Timestamp: 'timestamp',
  Struct: 'struct', Value: 'struct', ListValue: 'struct', NullValue: 'struct',
  DoubleValue: 'wrappers', FloatValue: 'wrappers', Int64Value: 'wrappers', UInt64Value: 'wrappers', Int32Value: 'wrappers',
  UInt32Value: 'wrappers', BoolValue: 'wrappers', StringValue: 'wrappers', BytesValue: 'wrappers',
};

/** A ServerReflectionRequest as proto-loader hands it over (`oneofs`: the name of the field set). */
export interface ReflectionRequest {
  host?: string;
  message_request?: 'file_by_filename' | 'file_containing_symbol' | 'file_containing_extension' | 'all_extension_numbers_of_type' | 'list_services';
  file_by_filename?: string;
  file_containing_symbol?: string;
  file_containing_extension?: { containing_type?: string; extension_number?: number };
  all_extension_numbers_of_type?: string;
  list_services?: string;
}

type Declared = protobuf.Type | protobuf.Enum | protobuf.Service;

export class Reflection {
  /** File name → its FileDescriptorProto, encoded, and the files it imports. */
  private readonly files = new Map<string, { bytes: Uint8Array; imports: string[] }>();
  /** Fully-qualified name (package.Message, package.Service.Method, ...) → the file that declares it. */
  private readonly symbols = new Map<string, string>();

  /** `services`: the full names list_services answers; `protoFiles`: the files (relative to `dir`) they come from. */
  constructor(private readonly services: readonly string[], protoFiles: readonly string[], private readonly dir: string) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => (isAbsolute(target) || !existsSync(join(dir, target)) ? target : join(dir, target));
    root.loadSync([...protoFiles], { keepCase: true });
    root.resolveAll();
    const byFile = new Map<string, { pkg: string; declared: Declared[] }>();
    const visit = (ns: protobuf.NamespaceBase): void => {
      for (const obj of ns.nestedArray) {
        if (obj instanceof protobuf.Type || obj instanceof protobuf.Enum || obj instanceof protobuf.Service) {
          const file = this.fileOf(obj);
          const entry = byFile.get(file) ?? { pkg: ns.fullName.slice(1), declared: [] };
          entry.declared.push(obj);
          byFile.set(file, entry);
          this.index(obj, file);
        } else if (obj instanceof protobuf.Namespace) {
          visit(obj);
        }
      }
    };
    visit(root);
    for (const [name, { pkg, declared }] of byFile) {
      const imports = new Set<string>();
      for (const obj of declared) for (const used of referenced(obj)) imports.add(this.fileOf(used));
      imports.delete(name);
      const file = descriptor.FileDescriptorProto.fromObject({
        name,
        package: pkg,
        dependency: [...imports].sort(),
        messageType: declared.filter((d) => d instanceof protobuf.Type).map(messageDescriptor),
        enumType: declared.filter((d) => d instanceof protobuf.Enum).map(enumDescriptor),
        service: declared.filter((d) => d instanceof protobuf.Service).map(serviceDescriptor),
        syntax: 'proto3',
      });
      this.files.set(name, { bytes: descriptor.FileDescriptorProto.encode(file).finish(), imports: [...imports].sort() });
    }
  }

  /** The .proto file an object was declared in, relative to the proto directory, as imports name it. */
  private fileOf(obj: protobuf.ReflectionObject): string {
    for (let o: protobuf.ReflectionObject | null = obj; o; o = o.parent) {
      if (o.filename) return isAbsolute(o.filename) ? relative(this.dir, o.filename) : o.filename;
    }
    const wellKnown = obj.fullName.startsWith('.google.protobuf.') ? WELL_KNOWN[obj.name] : undefined;
    if (wellKnown) return `google/protobuf/${wellKnown}.proto`;
    throw new Error(`gRPC reflection: ${obj.fullName} comes from no known .proto file`);
  }

  private index(obj: Declared | protobuf.ReflectionObject, file: string): void {
    this.symbols.set(obj.fullName.slice(1), file);
    if (obj instanceof protobuf.Service) for (const m of obj.methodsArray) this.symbols.set(`${obj.fullName.slice(1)}.${m.name}`, file);
    if (obj instanceof protobuf.Type) for (const nested of obj.nestedArray) this.index(nested, file);
  }

  /** A file and every file it imports, directly or not: what a client needs to use the types it declares. */
  private withImports(name: string): Uint8Array[] {
    const seen = new Set<string>();
    const out: Uint8Array[] = [];
    const add = (n: string): void => {
      const file = this.files.get(n);
      if (!file || seen.has(n)) return;
      seen.add(n);
      out.push(file.bytes);
      file.imports.forEach(add);
    };
    add(name);
    return out;
  }

  /** The answer to one request: a message_response of ServerReflectionResponse. */
  answer(request: ReflectionRequest): object {
    const found = (file: string | undefined, what: string): object => {
      if (file === undefined || !this.files.has(file)) return { error_response: { error_code: Status.NOT_FOUND, error_message: `${what} is not known to this server` } };
      return { file_descriptor_response: { file_descriptor_proto: this.withImports(file) } };
    };
    switch (request.message_request) {
      case 'list_services':
        return { list_services_response: { service: this.services.map((name) => ({ name })) } };
      case 'file_by_filename':
        return found(request.file_by_filename, `file "${request.file_by_filename ?? ''}"`);
      case 'file_containing_symbol': {
        const symbol = (request.file_containing_symbol ?? '').replace(/^\./, '');
        return found(this.symbols.get(symbol), `symbol "${symbol}"`);
      }
      case 'all_extension_numbers_of_type': {
        // No .proto file here declares extensions: a known message type has none.
        const type = (request.all_extension_numbers_of_type ?? '').replace(/^\./, '');
        if (!this.symbols.has(type)) return { error_response: { error_code: Status.NOT_FOUND, error_message: `type "${type}" is not known to this server` } };
        return { all_extension_numbers_response: { base_type_name: type, extension_number: [] } };
      }
      case 'file_containing_extension': {
        const { containing_type: type = '', extension_number: n = 0 } = request.file_containing_extension ?? {};
        return { error_response: { error_code: Status.NOT_FOUND, error_message: `no extension ${n} of "${type}": no .proto file here declares extensions` } };
      }
      case undefined:
        return { error_response: { error_code: Status.INVALID_ARGUMENT, error_message: 'the request names no message_request (list_services, file_by_filename, file_containing_symbol, ...)' } };
    }
  }

  /** ServerReflectionInfo: one answer per request, in order, on one stream. */
  open(out: ResponseStream): { message(request: unknown): void; end(): void } {
    return {
      message: (request) => out.write({ valid_host: (request as ReflectionRequest).host ?? '', original_request: request, ...this.answer(request as ReflectionRequest) }),
      end: () => out.end(),
    };
  }
}

/*
 * Descriptors written here rather than with protobufjs's toDescriptor, which names a map's entry
 * type after the field ("Inputs", where protoc and every descriptor pool expect "InputsEntry")
 * and leaves type names relative.
 */

/** descriptor.proto's FieldDescriptorProto.Type numbers of the scalar types. */
const SCALAR: Record<string, number> = {
  double: 1, float: 2, int64: 3, uint64: 4, int32: 5, fixed64: 6, fixed32: 7, bool: 8, string: 9, bytes: 12,
  uint32: 13, sfixed32: 15, sfixed64: 16, sint32: 17, sint64: 18,
};
const TYPE_MESSAGE = 11;
const TYPE_ENUM = 14;
const LABEL_OPTIONAL = 1;
const LABEL_REPEATED = 3;

const camel = (name: string): string => name.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());

/** A field's type: a scalar's number, or a message or enum by its fully-qualified name. */
function fieldType(type: string, resolved: protobuf.Type | protobuf.Enum | null): { type: number; typeName?: string } {
  if (resolved) return { type: resolved instanceof protobuf.Enum ? TYPE_ENUM : TYPE_MESSAGE, typeName: resolved.fullName };
  const scalar = SCALAR[type];
  if (scalar === undefined) throw new Error(`gRPC reflection: field type ${type} is neither a scalar nor resolved`);
  return { type: scalar };
}

function messageDescriptor(type: protobuf.Type): object {
  const oneofs = type.oneofsArray;
  const entries: object[] = [];
  const field = type.fieldsArray.map((f) => {
    const base = { name: f.name, number: f.id, jsonName: camel(f.name) };
    if (f instanceof protobuf.MapField) {
      // A map is a repeated message of a nested entry type with key (1) and value (2), as protoc writes it.
      const entry = `${camel(f.name).replace(/^./, (c) => c.toUpperCase())}Entry`;
      entries.push({
        name: entry,
        field: [
          { name: 'key', number: 1, jsonName: 'key', label: LABEL_OPTIONAL, ...fieldType(f.keyType, null) },
          { name: 'value', number: 2, jsonName: 'value', label: LABEL_OPTIONAL, ...fieldType(f.type, f.resolvedType) },
        ],
        options: { mapEntry: true },
      });
      return { ...base, label: LABEL_REPEATED, type: TYPE_MESSAGE, typeName: `${type.fullName}.${entry}` };
    }
    const oneof = f.partOf ? oneofs.indexOf(f.partOf) : -1;
    return { ...base, label: f.repeated ? LABEL_REPEATED : LABEL_OPTIONAL, ...fieldType(f.type, f.resolvedType), ...(oneof >= 0 && { oneofIndex: oneof }) };
  });
  return {
    name: type.name,
    field,
    nestedType: [...type.nestedArray.filter((n) => n instanceof protobuf.Type).map(messageDescriptor), ...entries],
    enumType: type.nestedArray.filter((n) => n instanceof protobuf.Enum).map(enumDescriptor),
    oneofDecl: oneofs.map((o) => ({ name: o.name })),
  };
}

function enumDescriptor(e: protobuf.Enum): object {
  return { name: e.name, value: Object.entries(e.values).map(([name, number]) => ({ name, number })) };
}

function serviceDescriptor(service: protobuf.Service): object {
  return {
    name: service.name,
    method: service.methodsArray.map((m) => ({
      name: m.name,
      inputType: m.resolvedRequestType?.fullName,
      outputType: m.resolvedResponseType?.fullName,
      clientStreaming: m.requestStream ?? false,
      serverStreaming: m.responseStream ?? false,
    })),
  };
}

/** The message and enum types an object's fields and methods use (map values and nested types' fields included). */
function referenced(obj: Declared): (protobuf.Type | protobuf.Enum)[] {
  if (obj instanceof protobuf.Service) return obj.methodsArray.flatMap((m) => [m.resolvedRequestType, m.resolvedResponseType]).filter((t) => t !== null);
  if (obj instanceof protobuf.Enum) return [];
  const fields = obj.fieldsArray.map((f) => f.resolvedType).filter((t) => t !== null);
  const nested = obj.nestedArray.filter((n) => n instanceof protobuf.Type || n instanceof protobuf.Enum).flatMap((n) => referenced(n));
  return [...fields, ...nested];
}
