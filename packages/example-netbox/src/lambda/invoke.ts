// Entry of the invoke function's bundle: Lambda calls its export `handler`.
export { invokeHandler as handler } from './handler.js';
