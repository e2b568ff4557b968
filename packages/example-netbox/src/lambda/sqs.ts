// Entry of the sqs function's bundle: Lambda calls its export `handler`.
export { sqsHandler as handler } from './handler.js';
