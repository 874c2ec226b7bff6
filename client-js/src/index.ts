/**
 * Ferry client: publish to and subscribe to Kafka topics through a Ferry
 * gateway over one WebSocket (protocol v1, subprotocol `ferry.v1`).
 *
 * @packageDocumentation
 */

export { FerryClient } from './client.js';
export type {
  ConnectionState,
  DisconnectInfo,
  FerryClientEvents,
  FerryClientOptions,
  LivenessOptions,
  PublishAck,
  PublishOptions,
  ReconnectOptions,
  RestoredPublishResult,
  TokenRefreshOptions,
  Transport,
  UrlContext,
  UrlProvider,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { FerryError } from './errors.js';
export { HttpTransport, httpBase } from './http-transport.js';
export type { FetchLike, HttpTransportOptions } from './http-transport.js';
export type { ErrorSource, FerryErrorDetails } from './errors.js';
export { CLIENT_GAVE_UP, CLOSE_CODE_NAMES, ERROR_CODES, closeCodeName, mayReconnect } from './codes.js';
export type { ClientErrorCode, ErrorCode, ProtocolErrorCode } from './codes.js';
export { backoffDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export {
  MAX_ID_CHARS,
  PROTOCOL_VERSION,
  SUBPROTOCOL,
  V1_CAPABILITIES,
  decodeServerFrame,
  encodeClientFrame,
  publishFrame,
  toMessage,
  topicError,
} from './frames.js';
export type {
  AckFrame,
  AckMode,
  AuthFrame,
  AuthedFrame,
  ClientFrame,
  CommitFrame,
  CommittedFrame,
  ErrorFrame,
  FerryMessage,
  From,
  GapFrame,
  LaggedFrame,
  Limits,
  MessageFrame,
  Overflow,
  PingFrame,
  PongFrame,
  PublishFields,
  PublishFrame,
  ServerFrame,
  SubscribeFrame,
  SubscribedFrame,
  UnknownFrame,
  UnsubscribeFrame,
  UnsubscribedFrame,
  WelcomeFrame,
} from './frames.js';
export { MemoryStorage } from './queue.js';
export type { OfflineQueueOptions, OverflowPolicy, QueueStorage, QueuedPublish } from './queue.js';
export type { FerryStream, StreamOptions, SubscribeOptions, Subscription } from './subscription.js';
export { FerryState, createState, stateKey } from './state.js';
export type { FerryStateEvents, StateOptions } from './state.js';
export type { GetToken } from './token.js';
